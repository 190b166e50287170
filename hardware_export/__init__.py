"""Export trained spikelfp networks to NIR and to a plain HDF5 layout, and read them back.

Public API::

    graph = to_nir(net, input_shape, dt=1e-4)           # nir.NIRGraph
    write_nir(net, "net.nir", input_shape)              # + file (atomic, force= to overwrite)
    net2 = from_nir("net.nir")                          # or from_nir(graph)
    write_hdf5(net, "net.h5", input_shape, time_steps=25, input_encoding="constant")
    net3, meta = read_hdf5("net.h5", return_metadata=True)
    compare_networks(net, net2, input_shape, steps=25)  # spike agreement on random inputs

The layouts, the LIF discretization and what other simulators do with the files are
documented in ``hardware_export/SCHEMA.md``. The CLI subcommand lives in
:mod:`hardware_export.cli` (``add_export_parser`` / ``run_export``).
"""

from ._common import DEFAULT_DT, ResetMismatchError, ResetMismatchWarning
from .hdf5_export import FORMAT_VERSION, read_hdf5, read_hdf5_metadata, write_hdf5
from .nir_export import from_nir, to_nir, write_nir
from .verify import compare_networks, random_inputs, spike_agreement

__all__ = [
    "DEFAULT_DT", "FORMAT_VERSION", "ResetMismatchError", "ResetMismatchWarning",
    "compare_networks", "from_nir", "random_inputs", "read_hdf5", "read_hdf5_metadata",
    "spike_agreement", "to_nir", "write_hdf5", "write_nir",
]
