"""Item vocabulary: external item ids (strings) <-> internal ids, with the special ids first.

Layout (fixed, so models and collators can use the constants without a vocabulary at hand):

    0            PAD_ID    padding; `nn.Embedding(padding_idx=PAD_ID)`, never a target
    1            MASK_ID   the [MASK] item of BERT4Rec's cloze objective
    2 .. V-1     items     FIRST_ITEM_ID + position in `ItemVocab.items`

so `vocab.size` (= V = num_items + NUM_SPECIAL) is the `vocab_size` of the model. Original BERT4Rec puts
[MASK] after the last item (id N+1); we put it at 1 so that its id does not depend on the catalogue size.
Items are ordered by their external id (numerically when every id is an integer, else as strings), so the
same item set always gets the same internal ids; for the SASRec/BERT4Rec files (items 1..N) internal id =
external id + 1.

JSON file: {"format": "seqbert.item_vocab", "version": 1, "specials": ["[PAD]", "[MASK]"], "items": [...]}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

PAD_ID = 0
MASK_ID = 1
SPECIALS = ("[PAD]", "[MASK]")
NUM_SPECIAL = len(SPECIALS)
FIRST_ITEM_ID = NUM_SPECIAL
NO_TARGET = -1  # "this user has no validation/test target"; never a valid id, so misuse fails loudly

_FORMAT = "seqbert.item_vocab"
_VERSION = 1


def natural_order(ids: Iterable[str]) -> list[str]:
    """Sort ids numerically when all are integers ("2" < "10"), else as strings."""
    ids = list(ids)
    try:
        return sorted(ids, key=int)
    except ValueError:
        return sorted(ids)


class ItemVocab:
    """Bijection external item id (str) <-> internal id (int >= FIRST_ITEM_ID)."""

    def __init__(self, items: Sequence[str]):
        self.items: tuple[str, ...] = tuple(str(i) for i in items)
        self._index = {item: FIRST_ITEM_ID + k for k, item in enumerate(self.items)}
        if len(self._index) != len(self.items):
            seen: set[str] = set()
            dup = next(i for i in self.items if i in seen or seen.add(i))
            raise ValueError(f"ItemVocab: duplicate item id {dup!r}")

    @classmethod
    def from_items(cls, items: Iterable[str]) -> ItemVocab:
        """Vocabulary of the distinct `items`, in natural order (see module docstring)."""
        return cls(natural_order({str(i) for i in items}))

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def size(self) -> int:
        """Model vocabulary size V: specials + items."""
        return NUM_SPECIAL + len(self.items)

    def __len__(self) -> int:
        return self.size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemVocab) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"ItemVocab(num_items={self.num_items}, size={self.size})"

    def __contains__(self, item: object) -> bool:
        return str(item) in self._index

    def encode(self, item: str) -> int:
        try:
            return self._index[str(item)]
        except KeyError:
            raise KeyError(f"item {item!r} is not in the vocabulary ({self.num_items} items)") from None

    def decode(self, internal_id: int) -> str:
        k = int(internal_id) - FIRST_ITEM_ID
        if not 0 <= k < len(self.items):
            raise KeyError(f"id {internal_id} is not an item id (items are {FIRST_ITEM_ID}..{self.size - 1})")
        return self.items[k]

    def encode_many(self, items: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.encode(i) for i in items), dtype=np.int64)

    def decode_many(self, ids: Iterable[int]) -> list[str]:
        return [self.decode(i) for i in ids]

    def save(self, path: str | Path) -> None:
        data = {"format": _FORMAT, "version": _VERSION, "specials": list(SPECIALS), "items": list(self.items)}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> ItemVocab:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: item vocabulary file not found")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path}: expected a JSON object with format={_FORMAT!r}")
        if data.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported version {data.get('version')!r}, expected {_VERSION}")
        if data.get("specials") != list(SPECIALS):
            raise ValueError(
                f"{path}: specials {data.get('specials')!r} differ from this layout {list(SPECIALS)}"
            )
        items = data.get("items")
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError(f"{path}: 'items' must be a list of strings")
        try:
            return cls(items)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
