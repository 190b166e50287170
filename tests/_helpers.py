"""Small helpers shared by several test modules."""

import torch


def boost(net, factor=3.0):
    """Scale every synaptic weight of ``net`` so that its neurons actually spike."""
    with torch.no_grad():
        for m in net:
            if getattr(m, "weight", None) is not None:
                m.weight.mul_(factor)
    return net


def assert_netx_refuses(tmp_path, net, shape, words):
    """``write_netx`` refuses ``net`` with a one-line ValueError holding every one of ``words``
    and writes nothing."""
    import pytest

    from hardware_export.netx_export import write_netx

    with pytest.raises(ValueError) as e:
        write_netx(net, tmp_path / "x.h5", shape)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert list(tmp_path.iterdir()) == []
