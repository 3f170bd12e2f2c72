//! `breakwater-operator`: the control plane (built in the operator issue).

fn main() {
    println!("breakwater-operator {}", env!("CARGO_PKG_VERSION"));
}
