"""Where recipes are found: the user's path first, then the recipes shipped with the package.

The recipes live in the repository's top-level ``configs/`` and are installed
with the package as ``vtp_gen/recipes`` (a link to ``configs/`` in a checkout,
a copy in a wheel), so ``configs/stage1/tiny.yaml`` names the same file from a
checkout, from any other folder and from an installed package.
"""

from __future__ import annotations

from pathlib import Path

from vtp_gen.config import ConfigError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_PREFIX = "configs"


def resolve_recipe(path: str | Path) -> Path:
    """``path`` when it exists from here; else ``configs/<rest>`` from the shipped recipes."""
    path = Path(path)
    if path.is_file():
        return path
    parts = path.parts
    if not path.is_absolute() and parts and parts[0] == RECIPE_PREFIX:
        shipped = RECIPE_DIR.joinpath(*parts[1:])
        if shipped.is_file():
            return shipped
    raise ConfigError(f"recipe not found: {path} (looked in {Path.cwd()} and in the shipped {RECIPE_DIR})")


def shipped_recipes() -> list[Path]:
    """Every recipe the package ships, as ``configs/<step>/<name>.yaml`` paths under RECIPE_DIR."""
    return sorted(RECIPE_DIR.glob("*/*.yaml"))
