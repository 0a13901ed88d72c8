"""Real samples for `edgekd bench --data`: a dataset reference, or an .npz with one array per model input."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from edgekd.data import MAX_NPZ_BYTES, check_npz_memory, load_data
from edgekd.errors import BadInput
from edgekd.targets import check_regular_file


def load_samples(*, data: Union[str, Path]) -> Union[np.ndarray, dict[str, np.ndarray]]:
    """Held-out samples to feed `benchmark(inputs=...)`.

    An .npz without an array `x` is taken as named model inputs (e.g. `input_ids`,
    `attention_mask`, batch axis first); anything else is a dataset reference for
    `edgekd.data.load_data`, whose test split is used.
    """
    path = Path(data)
    if path.suffix == ".npz" and path.is_file():
        check_regular_file(path, max_bytes=MAX_NPZ_BYTES, kind="an .npz of inputs")
        try:
            with np.load(path, allow_pickle=False) as archive:
                check_npz_memory(archive, list(archive.files), path, kind="an .npz of inputs")
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as err:
            raise BadInput(f"{path}: not a readable .npz archive: {err}") from None
        if "x" not in arrays:
            if not arrays:
                raise BadInput(f"{path}: the archive holds no arrays")
            return arrays
    dataset = load_data(data)
    if dataset.is_text:
        raise BadInput(f"data '{data}': text samples must be tokenized first; pass an .npz with one array per "
                       "model input (e.g. input_ids, attention_mask)")
    return dataset.x_test if len(dataset.x_test) else dataset.x_val
