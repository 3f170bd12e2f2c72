//! `breakwater-sidecar`: the data-plane proxy (built in the sidecar issue).

fn main() {
    println!("breakwater-sidecar {}", env!("CARGO_PKG_VERSION"));
}
