//! rgfs: the GFS2 on-disk format library (`format`) and, later, the FUSE filesystem.
