"""A user's text file (a profile, a dataset): its bytes, then UTF-8 text or a UserError that names
the encoding it has instead. Shared by the profile reader and the dataset readers."""

from __future__ import annotations

from pathlib import Path

from tuiwiz.errors import UserError

_UTF16_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
               b"\xfe\xff": "UTF-16"}


def _utf16_without_bom(sample: bytes) -> bool:
    """ASCII text saved as UTF-16: a zero byte in nearly every other position, and only there."""
    if len(sample) < 8:
        return False
    even, odd = sample[0::2], sample[1::2]
    return any(half.count(0) > 0.9 * len(half) and other.count(0) == 0
               for half, other in ((even, odd), (odd, even)))


def read_file_bytes(path: Path, kind: str = "data") -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read this file: {exc.strerror or exc}", file=path, kind=kind,
                        hint="check the file's permissions") from None


def decode_text(raw: bytes, path: Path | str, *, kind: str = "data",
                what: str = "JSON, JSONL or CSV text") -> str:
    """UTF-8 text (a BOM is skipped), or a UserError that names the encoding the file has.

    UTF-16 is refused rather than guessed: without a BOM it cannot be told apart reliably,
    and every other tool in the chain (tokenizers, the hub) expects UTF-8.
    """
    def refuse(message: str, line: int | None = None, hint: str | None = None) -> UserError:
        return UserError(message, hint=hint, file=path, line=line, kind=kind)

    head = raw[:4]
    for bom, name in _UTF16_BOMS.items():
        if head.startswith(bom):
            raise refuse(f"this file is {name} text (it starts with a {name} byte-order mark); tuiwiz reads UTF-8",
                         hint=f"convert it: iconv -f {name} -t UTF-8 FILE > NEW (or save as UTF-8 in your editor)")
    sample = raw[:65536]
    if _utf16_without_bom(sample):
        raise refuse("this file looks like UTF-16 text (a zero byte after every character); tuiwiz reads UTF-8",
                     hint="convert it: iconv -f UTF-16LE -t UTF-8 FILE > NEW")
    if b"\x00" in sample:
        raise refuse(f"this is a binary file, not {what}",
                     hint="give a .json, .jsonl, .csv, .tsv or .parquet file" if kind == "data" else None)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise refuse(f"not UTF-8 text (byte {exc.start})", line,
                     hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW)") from None
