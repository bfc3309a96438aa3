"""Compare two cache-key probes of benchmarks/cache_key_probe.py field by field.

python benchmarks/cache_key_diff.py A.json B.json: prints each key-detail field that differs once object addresses
are masked. For aot_config it also says whether the decomposition tables hold the same entries, and whether in the
same order: on torch 2.11 (H100) a Tune trial and a plain process held the same 1,162 entries in different orders
(BENCHMARKS.md, "Compile time and scope").
"""
import json
import re
import sys

ADDRESS = re.compile(r"0x[0-9a-f]+")
DECOMPOSITION = re.compile(r"<OpOverload\(op='([^']+)', overload='([^']+)'\)>: ")


def masked(text: str) -> str:
    """The repr with object addresses replaced, so two processes' reprs can be compared."""
    return ADDRESS.sub("0x", text)


def field_differences(a: dict, b: dict) -> list[str]:
    """One line per differing field of two probes' cache-key details, paired in order."""
    lines = []
    for one, other in zip(a["details"], b["details"]):
        for field in sorted(set(one) | set(other)):
            left, right = masked(one.get(field, "")), masked(other.get(field, ""))
            if left == right:
                continue
            line = f"{one['kind']}.{field}: differs"
            if field == "aot_config":
                ops_a, ops_b = DECOMPOSITION.findall(left), DECOMPOSITION.findall(right)
                line += (f" (decompositions: {len(ops_a)} vs {len(ops_b)}, only in A {len(set(ops_a) - set(ops_b))}, "
                         f"only in B {len(set(ops_b) - set(ops_a))}, same order: {ops_a == ops_b})")
            lines.append(line)
    return lines


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    first, second = (json.load(open(path)) for path in sys.argv[1:3])
    print("counters A:", first["counters"])
    print("counters B:", second["counters"])
    print("\n".join(field_differences(first, second)) or "no field differs")
