//! Runnable examples of the mesh. Each example keeps its mesh configuration in
//! a folder beside its code; this crate tells programs and tests where.

use std::path::PathBuf;

/// The folder holding the WordPress canary's mesh configuration: the reference
/// article's three listings plus the services and workloads behind them.
pub fn wordpress_canary_mesh_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wordpress-canary/mesh")
}
