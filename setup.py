"""Build script: the pure-Python package, plus the CUDA extension ``fusedlr._C`` from csrc/.

The extension is compiled with nvcc through ninja when FUSEDLR_BUILD_CUDA=1, or when a CUDA
toolkit is found and FUSEDLR_BUILD_CUDA is not 0. Environment:

  FUSEDLR_BUILD_CUDA   1: build (fail without nvcc); 0: never; unset: build if nvcc is found
  FUSEDLR_CUDA_ARCHS   "80;86;89;90" by default: SASS for each, plus PTX for the newest
  CUDA_HOME            where the toolkit is (else CUDA_PATH, /usr/local/cuda, nvcc on PATH)
  MAX_JOBS             parallel jobs for ninja and for nvcc's per-architecture threads

The extension includes no torch header and links cudart statically, so the wheel works with
any torch and needs only an NVIDIA driver new enough for the toolkit it was built with.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "80;86;89;90"


def find_cuda_home():
    """The toolkit root: CUDA_HOME, CUDA_PATH, /usr/local/cuda, or nvcc's on PATH; it must hold
    bin/nvcc and the static cudart the extension links."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    on_path = shutil.which("nvcc")
    if on_path:
        roots.append(str(Path(on_path).resolve().parent.parent))
    for root in filter(None, roots):
        root = Path(root).resolve()
        if (root / "bin" / "nvcc").is_file() and (root / "lib64" / "libcudart_static.a").is_file():
            return root
    return None


def find_nvcc():
    home = find_cuda_home()
    return home / "bin" / "nvcc" if home else None


def want_cuda():
    flag = os.environ.get("FUSEDLR_BUILD_CUDA", "").strip()
    if flag == "0":
        return False
    if find_nvcc() is None:
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
    """Compiles fusedlr._C with nvcc and the host compiler through a generated build.ninja."""

    def build_extension(self, ext):
        if ext.name != "fusedlr._C":
            return super().build_extension(ext)
        import pybind11

        cuda_home = find_cuda_home()
        nvcc = cuda_home / "bin" / "nvcc"
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(self.build_temp).resolve()
        temp.mkdir(parents=True, exist_ok=True)
        cxx = os.environ.get("CXX", "c++")
        includes = f"-I{sysconfig.get_paths()['include']} -I{pybind11.get_include()} -I{ROOT / 'csrc'}"
        gencode = " ".join(gencode_flags(os.environ.get("FUSEDLR_CUDA_ARCHS", DEFAULT_ARCHS)))
        ninja_file = temp / "build.ninja"
        ninja_file.write_text(
            f"""ninja_required_version = 1.3
builddir = {temp}
rule nvcc
  command = {nvcc} -O3 -std=c++17 --threads {jobs} -Xcompiler -fPIC -I{ROOT / "csrc"} {gencode} -c $in -o $out
  description = nvcc $in
rule cxx
  command = {cxx} -O2 -std=c++17 -fPIC -fvisibility=hidden {includes} -c $in -o $out
  description = c++ $in
rule link
  command = {cxx} -shared $in -L{cuda_home / "lib64"} -lcudart_static -ldl -lrt -lpthread -o $out
  description = link $out
build {temp / "kernels.o"}: nvcc {ROOT / "csrc" / "kernels.cu"} | {ROOT / "csrc" / "kernels.h"} {ROOT / "csrc" / "layout.h"}
build {temp / "binding.o"}: cxx {ROOT / "csrc" / "binding.cpp"} | {ROOT / "csrc" / "kernels.h"} {ROOT / "csrc" / "layout.h"}
build {out}: link {temp / "binding.o"} {temp / "kernels.o"}
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
            raise SystemExit("building fusedlr._C needs ninja: pip install ninja") from None
        return [found]


ext_modules = [Extension("fusedlr._C", sources=["csrc/binding.cpp"])] if want_cuda() else []
setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithNvcc})
