"""The shared adapter's wire format: packed into one array, unpacked exactly, aggregated identically."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from feddat_flwr.packing import PACKED_KEY, pack, unpack

ADAPTER = {"b.lora_B": torch.arange(6.0).reshape(2, 3), "a.lora_A": torch.arange(6.0, 10.0).reshape(4, 1)}


def test_pack_concatenates_in_sorted_key_order_and_unpack_restores_every_tensor():
    packed = pack(ADAPTER)
    assert set(packed) == {PACKED_KEY}
    assert packed[PACKED_KEY].tolist() == [6.0, 7.0, 8.0, 9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = unpack(ArrayRecord(packed).to_torch_state_dict(), ADAPTER)  # through Flower's record
    assert set(back) == set(ADAPTER) and all(torch.equal(back[k], ADAPTER[k]) for k in ADAPTER)
    assert pack({}) == {} and unpack({}, ADAPTER) == {}


def test_a_mean_of_packed_adapters_is_the_packed_mean_of_the_adapters():
    other = {k: v * 3 + 1 for k, v in ADAPTER.items()}
    mean_packed = (pack(ADAPTER)[PACKED_KEY] * 0.25 + pack(other)[PACKED_KEY] * 0.75)
    mean = {k: ADAPTER[k] * 0.25 + other[k] * 0.75 for k in ADAPTER}
    assert torch.equal(unpack({PACKED_KEY: mean_packed}, ADAPTER)["b.lora_B"], mean["b.lora_B"])


@pytest.mark.parametrize("packed, match", [
    ({PACKED_KEY: torch.zeros(9)}, r"shape \(9,\); this model's adapter packs to \(10,\)"),
    ({PACKED_KEY: torch.zeros(2, 5)}, r"shape \(2, 5\)"),
    ({"a.lora_A": torch.zeros(4, 1)}, "has the one key 'shared-adapter'"),
])
def test_unpack_names_what_does_not_fit_the_model(packed, match):
    with pytest.raises(ValueError, match=match):
        unpack(packed, ADAPTER)


def test_pack_refuses_mixed_dtypes():
    with pytest.raises(ValueError, match="mixed dtypes"):
        pack({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float16)})
    assert np.asarray(pack(ADAPTER)[PACKED_KEY]).dtype == np.float32
