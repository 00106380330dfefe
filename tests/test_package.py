"""The repository is one installable package with a one-way data flow: scripts import the package, never the reverse;
no module has two import names; a wheel installs and imports from outside the repository."""

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train_mblip", "predict", "convert_mblip", "app", "eval"}
REMOTE_CODE = ("configuration_mblip.py", "modeling_mblip.py", "processing_mblip.py")


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((ROOT / "mblip").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def module_level_imports(name: str, path: Path) -> set[str]:
    """Absolute names of what `name` imports at module level (imports inside functions are lazy and don't count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_never_imports_a_script():
    for name, path in package_modules().items():
        imported = all_imports(path) & SCRIPTS
        assert not imported, (
            f"{name} imports the script(s) {sorted(imported)}: scripts import the package, not the reverse"
        )


def test_no_import_cycles_at_module_level():
    modules = package_modules()
    graph = {
        name: {m for m in module_level_imports(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join(trail + [node])}"
        visiting.add(node)
        for nxt in graph[node]:
            visit(nxt, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])


def test_remote_code_files_have_one_import_name():
    """The package holds links to the root files, so `mblip.modeling_mblip` is the file at the root, and the root
    files cannot be imported under a second, top-level name (their relative imports need the package)."""
    for name in REMOTE_CODE:
        link = ROOT / "mblip" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), name
    result = subprocess.run(
        [sys.executable, "-c", "import modeling_mblip"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "relative import" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="the wheel build relies on symbolic links")
def test_the_wheel_installs_and_imports_from_outside_the_repository(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = wheels.glob("mblip_toolkit-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import os, mblip, mblip.modeling_mblip as m, mblip.data.languages, mblip.evaluation.run\n"
        "from mblip.evaluation.metrics import metric_path\n"
        "print(mblip.__file__); print(m.__file__); print(os.path.islink(m.__file__))\n"
        "print(os.path.isfile(os.path.join(metric_path('cider'), 'cider.py')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, modeling_file, is_link, has_metric = result.stdout.split()
    assert package_file.startswith(site) and modeling_file.startswith(site), result.stdout
    assert is_link == "False" and has_metric == "True"
    assert "class MBlipForConditionalGeneration" in Path(modeling_file).read_text(encoding="utf-8")
