//! fsck.rgfs — the checker and repairer for GFS2 volumes (issue 4 delivers
//! the passes and the `fsck.rgfs` binary). It is built on the format library
//! in `rgfs::format` and reads devices only through `rgfs_block::BlockDevice`.
