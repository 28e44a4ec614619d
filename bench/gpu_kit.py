"""Make `bench/gpu_mfu.py` one command on the lent GPU machine: the wheels it lacks, fetched here.

The GPU machine (the ``device`` tool's H200) cannot reach a package registry.
Its image has torch, torchvision, lightning, timm, torchmetrics, safetensors,
huggingface-hub and the scientific stack, but not open_clip, diffusers,
omegaconf, lpips, torch-fidelity or webdataset, which the GPU script imports
through vtp_gen and its baselines. This script downloads those as Python 3.12
wheels (the machine's Python) at the versions installed in this checkout's
venv, i.e. the versions the tests ran, into ``.whl/`` (git-ignored). Then:

    .venv/bin/python bench/gpu_kit.py            # here, once: fills .whl/ (~12 MB)
    device run, carry [".whl"]:  bash bench/gpu_run.sh       # there: installs them, runs gpu_mfu.py

``bash bench/gpu_run.sh`` installs the wheels into /tmp/site (not the image's
environment), puts ``src`` on the path (vtp_gen is not installed there) and
leaves the CSV rows and the log in ``$OUT``.

``DEVICE_IMAGE_PACKAGES`` is the image's package list as the workplace's
machine notes gave it (2026-11-17); ``python bench/gpu_kit.py --check``
reruns the GPU script's dry run here and lists any distribution it imports that
neither the image nor the kit provides. For another air-gapped node, put its
``pip list`` names there (or add what it lacks to ``KIT_PACKAGES``) and check.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO_ROOT / ".whl"
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT_BYTES = 64 * 2**20  # the whole working tree plus carried paths, per call

# What the kit brings. timm is in the image too, but open_clip wants >= 1.0.17 and the image's
# version is not recorded; carrying the tested one removes the doubt for 2.5 MB.
KIT_PACKAGES = (
    "diffusers",
    "open_clip_torch",
    "ftfy",
    "wcwidth",
    "omegaconf",
    "lpips",
    "torch_fidelity",
    "webdataset",
    "braceexpand",
    "timm",
    "importlib_metadata",
)

# The device image's Python packages (the device tool's KINDS.md, read 2026-11-17).
DEVICE_IMAGE_PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
    einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
    gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
    iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
    kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
    nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
    nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp
    """.split()
)


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(packages=KIT_PACKAGES) -> list[str]:
    """``name==version`` for each kit package, at the version installed here (what the tests ran)."""
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed in this environment: run `make setup` first") from None
    return pins


def requirements_closure(names) -> set[str]:
    """``names`` and everything they require as installed here (extras left out), normalised."""
    seen, todo = set(), [normalise(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an image package this environment does not have
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)))
    return seen


def uncovered(distributions, kit=KIT_PACKAGES, image=DEVICE_IMAGE_PACKAGES) -> list[str]:
    """The distributions neither the device image nor the kit provides (vtp_gen itself travels as src/).

    What an image package needs here counts as provided: there the image's own version of that
    package comes with its own needs (this venv's huggingface-hub imports httpx2, the image's httpx).
    """
    provided = {normalise(n) for n in (*kit, "vtp_gen")} | requirements_closure(image)
    return sorted({d for d in distributions if normalise(d) not in provided}, key=normalise)


def download(pins: list[str], folder: Path = WHEEL_DIR) -> list[Path]:
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        DEVICE_PYTHON,
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(folder),
        *pins,
    ]
    subprocess.run(command, check=True)
    return sorted(folder.glob("*.whl"))


# The dry run --check makes: eager, one case per stage (the other sizes import the same modules).
CHECK_ARGS = ["--no-compile", "--only", "stage1/B", "stage2/B", "--csv", "/tmp/gpu-kit-check.csv"]


def imported_distributions(dry_run_args: list[str]) -> set[str]:
    """Distributions whose modules the GPU script's dry run imports (run in a child process)."""
    probe = (
        "import runpy, sys, importlib.metadata as md\n"
        "sys.argv = ['gpu_mfu.py', *sys.argv[1:]]\n"
        f"sys.path.insert(0, {str(REPO_ROOT / 'bench')!r})\n"
        "try:\n"
        f"    runpy.run_path({str(REPO_ROOT / 'bench' / 'gpu_mfu.py')!r}, run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "owners = md.packages_distributions()\n"
        "names = {d for m in list(sys.modules) for d in owners.get(m.split('.')[0], [])}\n"
        "print('DISTRIBUTIONS', ' '.join(sorted(names)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "--dry-run", *dry_run_args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the dry run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("DISTRIBUTIONS"))
    return set(line.split()[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the GPU script's dry run (eager) and list imports the image and the kit leave out",
    )
    args = parser.parse_args(argv)
    if args.check:
        missing = uncovered(imported_distributions(CHECK_ARGS))
        print("every import is covered" if not missing else f"not covered: {', '.join(missing)}")
        return 1 if missing else 0
    pins = pinned_requirements()
    wheels = download(pins)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"   {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {WHEEL_DIR}")
    print(f"(a device call carries {CARRY_LIMIT_BYTES >> 20} MiB in all, the working tree included)")
    print("on the GPU machine: device run with carry ['.whl'] and the command `bash bench/gpu_run.sh`")
    if total > CARRY_LIMIT_BYTES // 2:
        print("warning: the kit takes over half of what a device call may carry", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
