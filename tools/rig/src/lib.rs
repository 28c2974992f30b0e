//! vdpa-rig library (being written)
