"""Compose conf/ into params.yaml, the config every stage of the DVC pipeline (dvc.yaml) runs on.

    python -m src.dvc_params                          # params.yaml = conf/pipeline.yaml, composed
    python -m src.dvc_params train.lr=3e-4 dataset=cifar10   # ... with Hydra overrides (then: dvc repro)
    python -m src.dvc_params --check                  # exit 1 when params.yaml differs from conf/ (no overrides)

`dvc exp run -S key=value` does the same composition itself (hydra.enabled in .dvc/config, with the config
name and folder read from there); this command is for `dvc repro` after editing conf/, and uses DVC's own
composer so both write byte-identical files.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError
from .paths import PROJECT_ROOT

PARAMS_FILE = "params.yaml"


def hydra_settings(root: Path = PROJECT_ROOT) -> tuple[Path, str]:
    """(config folder, config name) from the repository's DVC config ([hydra] section), with DVC's defaults."""
    from dvc.config import Config

    hydra = Config(dvc_dir=str(root / ".dvc"), validate=False).get("hydra", {})
    return root / hydra.get("config_dir", "conf"), str(hydra.get("config_name", "config"))


def compose_params(overrides: list[str], output: Path, root: Path = PROJECT_ROOT) -> Path:
    from dvc.utils.hydra import compose_and_dump

    config_dir, config_name = hydra_settings(root)
    try:
        compose_and_dump(output, str(config_dir), None, config_name, str(root), list(overrides))
    except Exception as e:
        raise UserError(f"cannot compose {config_dir / config_name}.yaml with {overrides}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return output


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from .files import atomic_path

    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    overrides = [a for a in args if a != "--check"]
    target = PROJECT_ROOT / PARAMS_FILE
    try:
        if check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = compose_params(overrides, Path(tmp) / PARAMS_FILE).read_text()
            current = target.read_text() if target.is_file() else ""
            if fresh != current:
                print(f"{target} differs from conf/ composed with {overrides or 'no overrides'}; "
                      f"run: python -m src.dvc_params {' '.join(overrides)}".rstrip(), file=sys.stderr)
                return 1
            print(f"{target} is up to date with conf/")
            return 0
        with atomic_path(target) as tmp:
            compose_params(overrides, tmp)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}" + (f" ({' '.join(overrides)})" if overrides else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
