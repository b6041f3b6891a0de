"""The package layout: imports run one way, from the command line down through
the receiving side to the queue, TLS and the protocol core, then the hot paths
and foundations. No module imports one above it, or a sibling role."""

from __future__ import annotations

import ast
from pathlib import Path

import smtpedge

PACKAGE = Path(smtpedge.__file__).parent

# Each role folder, with its level; top-level modules not named are foundations
# (level 0: hot paths, errors, esmtp, config, hostlist, log).
ROLES = {"protocol": 1, "tls": 1, "queue": 1, "dsn": 1, "receiving": 2, "sending": 2,
         "delivery": 3, "cli": 4}  # fmt: skip


def _role(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "smtpedge" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ROLES else None


def _level(module: str) -> int:
    role = _role(module)
    if role is not None:
        return ROLES[role]
    if module in ("smtpedge", "smtpedge.__main__"):
        return 5  # the package's front door re-exports from every layer, lazily
    return 0


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            out.append(base)
            out.extend(f"{base}.{a.name}" for a in node.names if base == "smtpedge")
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return [m for m in out if m.startswith("smtpedge")]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def test_imports_run_down_the_layers() -> None:
    problems = []
    for name, path in _modules().items():
        if name in ("smtpedge", "smtpedge.__main__"):
            continue
        mine, my_role = _level(name), _role(name)
        for target in _imports(path):
            if target in ("smtpedge", "smtpedge.__version__", "smtpedge.BACKEND",
                          "smtpedge.BUILD_PROFILE"):  # fmt: skip
                continue
            theirs, their_role = _level(target), _role(target)
            if theirs > mine:
                problems.append(f"{name} imports {target}, a layer above it")
            elif theirs == mine and my_role != their_role:
                problems.append(f"{name} imports {target}, a sibling role")
    assert not problems, "\n".join(problems)


def test_connections_do_not_import_the_server() -> None:
    imports = _imports(PACKAGE / "receiving" / "connection.py")
    assert "smtpedge.receiving.server" not in imports


def test_public_names_stay_where_they_were() -> None:
    from smtpedge import certnames, data, proxy, smtpline, xtext

    assert smtpedge.Server.__name__ == "Server"
    assert smtpedge.Config.__name__ == "Config"
    assert smtpedge.Recipient.__name__ == "Recipient"
    for module in (certnames, data, proxy, smtpline, xtext):
        assert module.__name__.count(".") == 1
