"""Fetch the challenge's FineWeb shards and tokenizer, resumably and checksummed.

Remote layout (the Hugging Face dataset repo `willdepueoai/parameter-golf`, or a local mirror laid
out the same way), all under `datasets/`:
    datasets/manifest.json
    datasets/datasets/fineweb10B_<variant>/fineweb_train_%06d.bin, fineweb_val_%06d.bin
    datasets/tokenizers/<name>.model          (path given by the manifest's tokenizer entry)

Local layout written to `out_dir` (flat, what `python -m trainer train --data` reads):
    fineweb_train_000000.bin ...  fineweb_val_000000.bin ...
    <tokenizer file name>, e.g. fineweb_1024_bpe.model (the original name is kept so a run's
        --tokenizer flag names the same file on every machine)
    manifest.json                 (the copy the shard counts came from)
    checksums.json                {file name: {"sha256", "size_bytes"}} of every verified file

Guarantees: a file only gets its final name after it is complete and verified (header and size via
trainer.data.shards.read_header, sha256 against the manifest or the hub's LFS metadata when either lists
one); files already complete are skipped; a failure never deletes or overwrites a good file.
Expected hashes: the hub's LFS metadata gives a sha256 per shard; a manifest (e.g. a mirror's) may
also carry a `"sha256": {file name: hex}` mapping in a dataset or tokenizer entry, which is enforced.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from trainer.data.shards import ShardError, read_header

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
MANIFEST_REMOTE = f"{REMOTE_ROOT}/manifest.json"
CHECKSUMS_NAME = "checksums.json"
PARTIAL_SUFFIX = ".partial"  # never matches the *.bin shard globs, so readers ignore it
HASH_CHUNK_BYTES = 8 << 20
OFFLINE_HINT = (
    "check the network, set HF_ENDPOINT to a reachable mirror, or pass --mirror DIR for a local copy laid out "
    "like the hub repo; without a network, build shards from local text with `python -m trainer data build`, "
    "or pass a folder that already holds shards to --data (and its .model file to --tokenizer)"
)


class DownloadError(RuntimeError):
    """A download could not be completed; the message names the file and the fix."""


class SourceUnreachableError(DownloadError):
    """The source (hub or mirror) cannot be reached at all."""


class ChecksumError(DownloadError):
    """A fetched file does not match its expected size or sha256."""


@dataclass(frozen=True)
class RemoteFile:
    """What the source knows about one remote file before fetching it (None: unknown)."""

    size_bytes: int | None = None
    sha256: str | None = None


class ShardSource(Protocol):
    """Where files come from; paths are repo-relative POSIX paths like `datasets/manifest.json`."""

    def describe(self) -> str:
        """Human-readable name of the source for messages."""

    def check_reachable(self) -> None:
        """Raise SourceUnreachableError quickly if the source cannot be used at all."""

    def remote_info(self, paths: list[str]) -> dict[str, RemoteFile]:
        """Size and sha256 of the given paths where the source knows them."""

    def fetch(self, remote_path: str, dest: Path) -> None:
        """Write the remote file's bytes to dest (the caller verifies and renames it)."""


class LocalMirrorSource:
    """A local directory laid out exactly like the hub repo (e.g. a copy on a shared disk)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return f"local mirror {self.root}"

    def check_reachable(self) -> None:
        if not (self.root / MANIFEST_REMOTE).is_file():
            raise SourceUnreachableError(
                f"{self.root}: no {MANIFEST_REMOTE} there; point --mirror at the folder that holds "
                f"`{REMOTE_ROOT}/` laid out like the hub repo {DEFAULT_REPO_ID}"
            )

    def remote_info(self, paths: list[str]) -> dict[str, RemoteFile]:
        # Only sizes: hashing the mirror's own copy would vouch for whatever corruption it holds.
        return {p: RemoteFile(size_bytes=(self.root / p).stat().st_size) for p in paths if (self.root / p).is_file()}

    def fetch(self, remote_path: str, dest: Path) -> None:
        src = self.root / remote_path
        if not src.is_file():
            raise DownloadError(f"{self.describe()}: {remote_path} is missing; complete the mirror or use the hub")
        shutil.copyfile(src, dest)


class HubSource:
    """The Hugging Face hub dataset repo, through huggingface_hub."""

    def __init__(self, repo_id: str = DEFAULT_REPO_ID, revision: str | None = None,
                 endpoint: str | None = None, staging_dir: Path | None = None, probe_timeout_s: float = 10.0):
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.staging_dir = staging_dir
        self.probe_timeout_s = probe_timeout_s

    def describe(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"Hugging Face hub {self.endpoint} dataset {self.repo_id}{rev}"

    def _unreachable(self, problem: str) -> SourceUnreachableError:
        return SourceUnreachableError(f"cannot reach the Hugging Face hub ({self.describe()}): {problem}; {OFFLINE_HINT}")

    def check_reachable(self) -> None:
        # huggingface_hub retries connection errors with backoff (~25 s); one short probe fails fast instead.
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise self._unreachable("HF_HUB_OFFLINE is set (unset it to download)")
        url = f"{self.endpoint}/api/datasets/{self.repo_id}"
        request = urllib.request.Request(url, method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=self.probe_timeout_s).close()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise DownloadError(
                    f"{self.describe()}: dataset repo not found (HTTP 404); check --repo-id"
                ) from None
            # Any other HTTP answer (401 gated, 5xx) means the host is reachable; let the download say more.
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise self._unreachable(f"{reason}") from None

    def remote_info(self, paths: list[str]) -> dict[str, RemoteFile]:
        from huggingface_hub import HfApi

        try:
            entries = HfApi(endpoint=self.endpoint).get_paths_info(
                self.repo_id, paths, repo_type="dataset", revision=self.revision
            )
        except Exception as exc:  # metadata only improves checking; the download itself still verifies headers
            print(f"warning: could not read file metadata from {self.describe()} ({exc}); "
                  "checking shard headers only")
            return {}
        info = {}
        for entry in entries:
            lfs = getattr(entry, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            info[entry.path] = RemoteFile(size_bytes=getattr(entry, "size", None), sha256=sha)
        return info

    def fetch(self, remote_path: str, dest: Path) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        # local_dir staging keeps huggingface_hub's own byte-level resume (its .incomplete files) inside
        # out_dir, on the same filesystem, so the finished file is renamed rather than copied.
        staging = self.staging_dir or dest.parent / ".hub-staging"
        try:
            path = hf_hub_download(self.repo_id, remote_path, repo_type="dataset", revision=self.revision,
                                   local_dir=staging, endpoint=self.endpoint)
        except LocalEntryNotFoundError as exc:
            raise self._unreachable(f"{remote_path}: {exc}") from None
        except EntryNotFoundError:
            raise DownloadError(f"{self.describe()}: {remote_path} does not exist; check --variant and --revision") from None
        except Exception as exc:  # HfHubHTTPError, OSError, and (huggingface_hub 2.x) httpx transport errors
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
            raise DownloadError(
                f"{self.describe()}: downloading {remote_path} failed ({type(exc).__name__}: {reason}); rerun the "
                f"same command to resume (finished files are kept), or {OFFLINE_HINT}"
            ) from None
        os.replace(path, dest)


@dataclass(frozen=True)
class Variant:
    """One tokenizer family's shard set as the manifest describes it."""

    dataset_name: str
    train_files: int
    val_files: int
    tokenizer_remote: str
    expected_sha256: dict[str, str]


def dataset_name(variant: str) -> str:
    """The manifest's dataset name for a tokenizer variant, e.g. sp1024 -> fineweb10B_sp1024."""
    return f"fineweb10B_{variant}"


def parse_manifest(manifest: dict, variant: str) -> Variant:
    """Shard counts, tokenizer path and any listed hashes for a variant, or a clear error."""
    name = dataset_name(variant)
    datasets = manifest.get("datasets", [])
    entry = next((d for d in datasets if d.get("name") == name), None)
    if entry is None:
        known = sorted(d.get("name", "?") for d in datasets)
        raise DownloadError(f"manifest has no dataset {name}; available: {known}; pick another --variant")
    stats = entry.get("stats") or {}
    if "files_train" not in stats or "files_val" not in stats:
        raise DownloadError(f"manifest entry {name} lacks stats.files_train/files_val; the manifest is not the challenge's")
    tok_name = entry.get("tokenizer_name")
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok is None or not (tok.get("model_path") or tok.get("path")):
        raise DownloadError(f"manifest lists no tokenizer model for {name} (tokenizer_name={tok_name!r})")
    tokenizer_remote = f"{REMOTE_ROOT}/{tok.get('model_path') or tok.get('path')}"
    expected = dict(entry.get("sha256") or {})
    tok_sha = tok.get("sha256")
    if isinstance(tok_sha, dict):
        expected.update(tok_sha)
    elif isinstance(tok_sha, str):
        expected[Path(tokenizer_remote).name] = tok_sha
    return Variant(name, int(stats["files_train"]), int(stats["files_val"]), tokenizer_remote, expected)


def planned_files(variant: Variant, train_shards: int) -> list[str]:
    """Remote paths to fetch: every val shard, the first train_shards train shards, the tokenizer."""
    if train_shards < 0:
        raise DownloadError(f"--train-shards {train_shards} is negative; pass 0 or more")
    if train_shards > variant.train_files:
        raise DownloadError(
            f"{variant.dataset_name} has {variant.train_files} train shards; --train-shards {train_shards} asks for more"
        )
    base = f"{REMOTE_ROOT}/datasets/{variant.dataset_name}"
    paths = [f"{base}/fineweb_val_{i:06d}.bin" for i in range(variant.val_files)]
    paths += [f"{base}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    return paths + [variant.tokenizer_remote]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def load_checksums(out_dir: Path) -> dict[str, dict]:
    """The recorded {file name: {sha256, size_bytes}} of verified files (empty if none yet)."""
    path = Path(out_dir) / CHECKSUMS_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # rebuilt from the files themselves: each is re-hashed before being trusted


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def is_shard(name: str) -> bool:
    """Whether a file name (final or partial) is a token shard with a header to check."""
    return name.removesuffix(PARTIAL_SUFFIX).endswith(".bin")


def verify_file(path: Path, expected: RemoteFile) -> str:
    """Check a local file (shard header/size, expected size and sha256); return its sha256."""
    if is_shard(path.name):
        read_header(path)  # raises ShardError naming the file
    size = path.stat().st_size
    if expected.size_bytes is not None and size != expected.size_bytes:
        raise ChecksumError(f"{path.name}: {size} bytes but the source lists {expected.size_bytes}")
    sha = sha256_file(path)
    if expected.sha256 is not None and sha != expected.sha256:
        raise ChecksumError(f"{path.name}: sha256 {sha[:16]}... but the source lists {expected.sha256[:16]}...")
    return sha


def _already_complete(path: Path, expected: RemoteFile, record: dict | None, rehash: bool) -> str | None:
    """The sha256 if the local file is complete and matches, else None (it must be fetched again)."""
    if not path.is_file():
        return None
    try:
        if record and not rehash:
            # Cheap check: a file recorded as verified with the same size and hash is trusted as is.
            if is_shard(path.name):
                read_header(path)
            same_size = path.stat().st_size == record.get("size_bytes")
            same_sha = expected.sha256 is None or expected.sha256 == record.get("sha256")
            if same_size and same_sha:
                return record["sha256"]
        sha = verify_file(path, expected)
        if record and expected.sha256 is None and sha != record.get("sha256"):
            return None  # changed since it was verified, and the source lists no hash to settle it
        return sha
    except (ShardError, ChecksumError):
        return None


@dataclass(frozen=True)
class DownloadResult:
    """What a download run did."""

    fetched: tuple[str, ...]
    skipped: tuple[str, ...]
    out_dir: Path
    tokenizer_path: Path


def download(source: ShardSource, out_dir: Path, variant: str = "sp1024", train_shards: int = 80,
             rehash: bool = False, progress: Callable[[str], None] = print) -> DownloadResult:
    """Fetch val shards, the first train_shards train shards and the tokenizer into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source.check_reachable()
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.is_file():
        tmp = manifest_path.with_name(manifest_path.name + PARTIAL_SUFFIX)
        source.fetch(MANIFEST_REMOTE, tmp)
        os.replace(tmp, manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DownloadError(f"{manifest_path}: not valid JSON ({exc}); delete it and rerun") from None
    spec = parse_manifest(manifest, variant)
    remote_paths = planned_files(spec, train_shards)
    info = source.remote_info(remote_paths)
    checksums = load_checksums(out_dir)
    fetched, skipped = [], []
    for i, remote in enumerate(remote_paths, 1):
        name = Path(remote).name
        known = info.get(remote, RemoteFile())
        expected = RemoteFile(known.size_bytes, known.sha256 or spec.expected_sha256.get(name))
        local = out_dir / name
        tag = f"[{i}/{len(remote_paths)}] {name}"
        sha = _already_complete(local, expected, checksums.get(name), rehash)
        if sha is None:
            if local.exists():
                progress(f"{tag}: local copy is incomplete or does not match; fetching again")
            sha = _fetch_verified(source, remote, local, expected)
            fetched.append(name)
            progress(f"{tag}: fetched {local.stat().st_size:,} bytes, sha256 {sha[:12]} ok")
        else:
            skipped.append(name)
            progress(f"{tag}: already complete, skipped")
        if checksums.get(name) != {"sha256": sha, "size_bytes": local.stat().st_size}:
            checksums[name] = {"sha256": sha, "size_bytes": local.stat().st_size}
            _write_json_atomic(out_dir / CHECKSUMS_NAME, checksums)  # after every file: an error keeps the rest
    return DownloadResult(tuple(fetched), tuple(skipped), out_dir, out_dir / Path(spec.tokenizer_remote).name)


def _fetch_verified(source: ShardSource, remote: str, local: Path, expected: RemoteFile) -> str:
    """Fetch to a temporary name, verify, then rename over the final name; return the sha256."""
    tmp = local.with_name(local.name + PARTIAL_SUFFIX)
    tmp.unlink(missing_ok=True)  # a leftover from an interrupted run is not trusted
    try:
        source.fetch(remote, tmp)
        sha = verify_file(tmp, expected)
    except (ShardError, ChecksumError) as exc:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"{source.describe()}: {remote} failed verification ({exc}); the local copy was left untouched. "
            "Rerun to fetch it again; if it fails again the source copy is corrupt"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, local)
    return sha
