"""Build script: the pure-Python package, plus the CUDA extensions ``fusedlr._C_cu<major>`` from csrc/.

The extension is compiled with nvcc through ninja when FUSEDLR_BUILD_CUDA=1, or when a CUDA
toolkit is found and FUSEDLR_BUILD_CUDA is not 0. Environment:

  FUSEDLR_BUILD_CUDA   1: build (fail without nvcc); 0: never; unset: build if nvcc is found
  FUSEDLR_CUDA_ARCHS   "80;86;89;90" by default: SASS for each, plus PTX for the newest
  FUSEDLR_CUDA_HOMES   toolkit roots separated by ";" (e.g. one CUDA 12 and one CUDA 13): one
                       extension per toolkit, fusedlr._C_cu<major>, all in the same wheel
  CUDA_HOME            the one toolkit when FUSEDLR_CUDA_HOMES is unset (else CUDA_PATH,
                       /usr/local/cuda, nvcc on PATH)
  MAX_JOBS             parallel jobs for ninja and for nvcc's per-architecture threads

The extension includes no torch header and links cudart statically, so the wheel works with
any torch and needs only an NVIDIA driver that supports the CUDA major version it was built
with; fusedlr/_cuda.py loads the newest extension the driver can run. The nvcc part does not
depend on Python: its object is kept in build/cuda-<version>-<archs>/ and reused when wheels
are built for several Pythons.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "80;86;89;90"


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").is_file() and (root / "lib64" / "libcudart_static.a").is_file()


def find_cuda_homes():
    """The toolkit roots to build for: FUSEDLR_CUDA_HOMES, else the one find_cuda_home() finds."""
    listed = [Path(r).resolve() for r in os.environ.get("FUSEDLR_CUDA_HOMES", "").split(";") if r.strip()]
    for root in listed:
        if not _is_toolkit(root):
            raise SystemExit(f"FUSEDLR_CUDA_HOMES: {root} has no bin/nvcc and lib64/libcudart_static.a")
    if listed:
        return listed
    home = find_cuda_home()
    return [home] if home else []


def cuda_version(home: Path) -> tuple[int, int]:
    """(major, minor) of the toolkit at ``home``, from nvcc --version."""
    out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"release (\d+)\.(\d+)", out.stdout)
    if not match:
        raise SystemExit(f"cannot read the CUDA version from {home}/bin/nvcc --version:\n{out.stdout}")
    return int(match.group(1)), int(match.group(2))


def find_cuda_home():
    """The toolkit root: CUDA_HOME, CUDA_PATH, /usr/local/cuda, or nvcc's on PATH; it must hold
    bin/nvcc and the static cudart the extension links."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    on_path = shutil.which("nvcc")
    if on_path:
        roots.append(str(Path(on_path).resolve().parent.parent))
    for root in filter(None, roots):
        root = Path(root).resolve()
        if _is_toolkit(root):
            return root
    return None


def want_cuda():
    flag = os.environ.get("FUSEDLR_BUILD_CUDA", "").strip()
    if flag == "0":
        return False
    if not find_cuda_homes():
        if flag == "1":
            raise SystemExit("FUSEDLR_BUILD_CUDA=1 but no nvcc was found (set CUDA_HOME)")
        print("fusedlr: no CUDA toolkit found; building without the cuda backend", file=sys.stderr)
        return False
    return True


def gencode_flags(archs: str):
    """SASS for every architecture, PTX for the newest (so newer GPUs can JIT it)."""
    names = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    if not names or not all(a.rstrip("af").isdigit() for a in names):
        raise SystemExit(f"FUSEDLR_CUDA_ARCHS={archs!r}: expected numbers such as '80;90'")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in names]
    newest = max(names, key=lambda a: int(a.rstrip("af")))
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


class BuildWithNvcc(build_ext):
    """Compiles each fusedlr._C_cu<major> with nvcc and the host compiler through a generated
    build.ninja: the nvcc object once per toolkit and architecture list, the binding per Python."""

    def run(self):
        # In place (a developer's tree), only another major's extension is replaced; a build
        # without a toolkit (no extensions: this command does not run) leaves theirs alone.
        if not self.inplace:
            remove_stale_extensions(Path(self.build_lib) / "fusedlr")
            # What tools/check_wheel.sh expects in the wheel: the extensions this build makes.
            (ROOT / "build").mkdir(exist_ok=True)
            names = [name.rsplit(".", 1)[1] for name in sorted(TOOLKITS)]
            (ROOT / "build" / "extensions.txt").write_text("".join(f"{name}\n" for name in names))
        elif TOOLKITS:
            remove_stale_extensions(ROOT / "fusedlr")
        super().run()

    def build_extension(self, ext):
        if not ext.name.startswith("fusedlr._C"):
            return super().build_extension(ext)
        import pybind11

        cuda_home = TOOLKITS[ext.name]
        nvcc = cuda_home / "bin" / "nvcc"
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(self.build_temp).resolve() / ext.name
        temp.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("FUSEDLR_CUDA_ARCHS", DEFAULT_ARCHS)
        major, minor = cuda_version(cuda_home)
        device_dir = ROOT / "build" / f"cuda-{major}.{minor}-{archs.replace(';', '_')}"
        device_dir.mkdir(parents=True, exist_ok=True)
        cxx = os.environ.get("CXX", "c++")
        includes = f"-I{sysconfig.get_paths()['include']} -I{pybind11.get_include()} -I{ROOT / 'csrc'}"
        module = ext.name.rsplit(".", 1)[1]
        gencode = " ".join(gencode_flags(archs))
        sources = f"{ROOT / 'csrc' / 'kernels.h'} {ROOT / 'csrc' / 'launches.h'} {ROOT / 'csrc' / 'layout.h'}"
        ninja_file = temp / "build.ninja"
        ninja_file.write_text(
            f"""ninja_required_version = 1.3
builddir = {temp}
rule nvcc
  command = {nvcc} -O3 -std=c++17 --threads {jobs} -Xcompiler -fPIC -I{ROOT / "csrc"} {gencode} -c $in -o $out
  description = nvcc $in
rule cxx
  command = {cxx} -O2 -std=c++17 -fPIC -fvisibility=hidden -DFUSEDLR_MODULE_NAME={module} {includes} -c $in -o $out
  description = c++ $in
rule link
  command = {cxx} -shared $in -L{cuda_home / "lib64"} -lcudart_static -ldl -lrt -lpthread -o $out
  description = link $out
build {device_dir / "kernels.o"}: nvcc {ROOT / "csrc" / "kernels.cu"} | {sources}
build {temp / "binding.o"}: cxx {ROOT / "csrc" / "binding.cpp"} | {sources}
build {out}: link {temp / "binding.o"} {device_dir / "kernels.o"}
"""
        )
        subprocess.run(_ninja() + ["-f", str(ninja_file), "-j", jobs], check=True)


def _ninja():
    try:
        import ninja

        return [os.path.join(ninja.BIN_DIR, "ninja")]
    except ImportError:
        found = shutil.which("ninja")
        if not found:
            raise SystemExit("building fusedlr._C_cu* needs ninja: pip install ninja") from None
        return [found]


# The CUDA major versions fusedlr/_cuda.py loads (EXTENSION_MAJORS there): an extension for
# another would build and never load.
SUPPORTED_MAJORS = (12, 13)

# fusedlr._C_cu<major> -> the toolkit it is built with.
TOOLKITS = {}
if want_cuda():
    for home in find_cuda_homes():
        major = cuda_version(home)[0]
        if major not in SUPPORTED_MAJORS:
            raise SystemExit(f"{home} is CUDA {major}: fusedlr's cuda backend is built with CUDA 12 or 13 toolkits")
        name = f"fusedlr._C_cu{major}"
        if name in TOOLKITS:
            raise SystemExit(f"FUSEDLR_CUDA_HOMES lists two toolkits of one major version: {TOOLKITS[name]}, {home}")
        TOOLKITS[name] = home


def remove_stale_extensions(folder: Path) -> None:
    """Extensions of toolkits this build does not use (an earlier build's, in build/lib) would be
    packed into the wheel beside the new ones: removed."""
    keep = {name.rsplit(".", 1)[1] for name in TOOLKITS}
    for path in folder.glob("_C_cu*.so"):
        if path.name.split(".")[0] not in keep:
            path.unlink()


class BuildPy(build_py):
    """A build without the extension (no toolkit) packs no extension an earlier build left."""

    def run(self):
        super().run()
        if not TOOLKITS:
            remove_stale_extensions(Path(self.build_lib) / "fusedlr")


ext_modules = [Extension(name, sources=["csrc/binding.cpp"]) for name in TOOLKITS]
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithNvcc, "build_py": BuildPy})
