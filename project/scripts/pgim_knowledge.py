"""Key PGIM's released knowledge by image id: `<id>.jpg :<text>` lines.

    python scripts/pgim_knowledge.py assets/twitter2015/pgim.zip assets/twitter2015 assets/twitter2015/pgim_knowledge.txt

PGIM (Li et al., EMNLP 2023 Findings) released its ChatGPT knowledge as one
zip per dataset holding train, valid and test in the inline format (each post,
`<EOS>`, then the knowledge tagged X), in the UMT files' order but without
image ids, and with a few posts missing. Each post is matched to the next UMT
post with the same tokens, which gives it the image id that convert reads.
"""
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import typer
from wasabi import msg

from spacy_ita.corpus.mner import read_mner
from spacy_ita.files import replace_file

SPLITS = ("train", "valid", "test")


def split_member(names: Iterable[str], split: str) -> str:
    """The zip member that holds `split` (e.g. "2015/valid.txt")."""
    found = [name for name in names if Path(name).stem.lower() == split]
    if len(found) != 1:
        raise ValueError(f"expected one {split} file in the zip, found {found or 'none'}")
    return found[0]


def keyed_knowledge(pgim_path: Path, umt_path: Path) -> Tuple[Dict[str, str], int]:
    """{image id: knowledge} for the posts of a PGIM split file, matched in order
    to the UMT split file, and the number of PGIM posts that matched none."""
    umt = [(doc._.image_id, [token.text for token in doc]) for doc in read_mner(umt_path)]
    keyed: Dict[str, str] = {}
    unmatched = position = 0
    for doc in read_mner(pgim_path, inline_field="knowledge"):
        words = [token.text for token in doc]
        match = next((i for i in range(position, len(umt)) if umt[i][1] == words), None)
        if match is None:
            unmatched += 1
            continue
        position = match + 1
        context = doc._.visual_context
        if context is not None and context.knowledge:
            keyed[umt[match][0]] = " ".join(context.knowledge)
    return keyed, unmatched


def main(
    pgim_zip: Path = typer.Argument(..., help="PGIM's zip for the dataset"),
    umt_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                   help="Folder with the UMT train/valid/test.txt"),
    output: Path = typer.Argument(..., help="The `<id>.jpg :<text>` file to write"),
) -> None:
    """Write OUTPUT from PGIM_ZIP, matching its posts to the UMT files in UMT_DIR."""
    if not pgim_zip.exists():
        if output.exists():
            msg.info(f"{pgim_zip} not found; keeping the knowledge already at {output}")
            return
        msg.fail(f"Neither {pgim_zip} nor {output} exists: run `spacy project assets`", exits=1)
    if not pgim_zip.is_file():
        msg.fail(f"{pgim_zip} cannot be read as a zip: it is not a file", exits=1)
    lines: List[str] = []
    try:  # a download cut short or an HTML page is no zip; a damaged member fails its CRC
        with zipfile.ZipFile(pgim_zip) as archive, tempfile.TemporaryDirectory() as tmp:
            for split in SPLITS:
                try:
                    member = split_member(archive.namelist(), split)
                except ValueError as err:
                    msg.fail(f"{pgim_zip}: {err}", exits=1)
                umt_file = umt_dir / f"{split}.txt"
                if not umt_file.exists():
                    msg.fail(f"{umt_file} not found: the UMT files come with `spacy project "
                             "assets`", exits=1)
                path = Path(archive.extract(member, tmp))
                try:
                    keyed, unmatched = keyed_knowledge(path, umt_file)
                except ValueError as err:  # a malformed line, named in the zip, not the copy
                    msg.fail(str(err).replace(str(path), f"{pgim_zip}:{member}"), exits=1)
                lines.extend(f"{image_id}.jpg :{text}" for image_id, text in keyed.items())
                msg.info(f"{split}: {len(keyed)} posts keyed, {unmatched} matched no UMT post")
    except (zipfile.BadZipFile, zlib.error) as err:
        msg.fail(f"{pgim_zip} cannot be read as a zip: {err}", exits=1)
    replace_file(output, ("\n".join(lines) + "\n").encode("utf8"))
    msg.good(f"Wrote the knowledge of {len(lines)} posts to {output}")


if __name__ == "__main__":
    typer.run(main)
