"""Which parts `workbook.py progress 3 04 05_sae_variants` means."""


def choose_parts(requested: list[str], available: list[str]) -> list[str]:
    """The parts named by number (`3`, `03`) or name (`03_feature_geometry`, `feature_geometry`), in
    part order without repeats; every part when none is named."""
    chosen = set()
    for name in requested:
        number = int(name) if name.isdecimal() else None
        matches = [part for part in available if name in (part, part.split("_", 1)[-1]) or number == int(part[:2])]
        if not matches:
            raise SystemExit(
                f"There is no part {name!r}: choose from {', '.join(available)} (by number, e.g. 3, or by name)."
            )
        chosen.update(matches)
    return [part for part in available if part in chosen or not requested]
