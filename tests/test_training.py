"""pacegeo.training: what the pruner-training stages share."""

import pytest

from pacegeo.training import model_size


@pytest.mark.parametrize("size,message", [("518", None), ("112x154", None),
                                          ("100", "multiples of 14"), ("axb", "expected HxW or a width")])
def test_training_size_is_hxw_or_a_width(size, message):
    from pacegeo.errors import PacegeoError

    if message is None:
        h, w = model_size("unused", size)
        assert w == int(size.split("x")[-1]) and h % 14 == 0 and (h == 112 if "x" in size else h == 392)
    else:
        with pytest.raises(PacegeoError, match=message):
            model_size("unused", size)
