"""Export trained spikelfp networks to NIR, to a plain HDF5 layout and to netx-native HDF5 for
Loihi (with a simulation of what the chip computes for it), and read them back.

Public API::

    graph = to_nir(net, input_shape, dt=1e-4)           # nir.NIRGraph
    write_nir(net, "net.nir", input_shape)              # + file (atomic, force= to overwrite)
    net2 = from_nir("net.nir")                          # or from_nir(graph)
    write_hdf5(net, "net.h5", input_shape, time_steps=25, input_encoding="constant")
    net3, meta = read_hdf5("net.h5", return_metadata=True)
    compare_networks(net, net2, input_shape, steps=25)  # spike agreement on random inputs
    write_netx(net, "net.netx.h5", input_shape, input_mode="graded", time_steps=25)  # Loihi
    plan = read_netx("net.netx.h5"); out = simulate_netx(plan, x_int).spikes   # chip output

The layouts, the LIF discretization and what other simulators do with the files are
documented in ``hardware_export/SCHEMA.md``. The CLI subcommand lives in
:mod:`hardware_export.cli` (``add_export_parser`` / ``run_export``).
"""

from ._common import DEFAULT_DT, ResetMismatchError, ResetMismatchWarning
from .hdf5_export import FORMAT_VERSION, read_hdf5, read_hdf5_metadata, write_hdf5
from .loihi_sim import simulate as simulate_netx
from .netx_export import NetxNetwork, quantize_network, read_netx, write_netx
from .nir_export import from_nir, to_nir, write_nir
from .verify import compare_networks, nir_roundtrip_agreement, random_inputs, spike_agreement

__all__ = [
    "DEFAULT_DT", "FORMAT_VERSION", "NetxNetwork", "ResetMismatchError", "ResetMismatchWarning",
    "compare_networks", "from_nir", "nir_roundtrip_agreement", "quantize_network", "random_inputs", "read_hdf5",
    "read_hdf5_metadata", "read_netx", "simulate_netx", "spike_agreement", "to_nir",
    "write_hdf5", "write_netx", "write_nir",
]
