//! The device tree, read through the Open Firmware client interface.
//!
//! QEMU passes no flattened tree to a `-kernel` image under VOF; the tree is reached through the
//! client interface (`finddevice`, `getprop`, `child`, `peer`). VOF's client entry point is itself
//! one hypercall (`KVMPPC_H_VOF_CLIENT` with the argument block's address), so the kernel makes
//! that hypercall directly and never has to switch back to 32-bit big-endian mode as a call into
//! the firmware's code would require. Argument blocks and property values are big-endian 32-bit
//! cells whatever the kernel's endianness.

use crate::hcall::{hcall, KVMPPC_H_VOF_CLIENT};

/// A device-tree node.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Node(pub u32);

/// Calls client-interface `service` (NUL-terminated) with `args`, returning `N` results.
fn call<const N: usize>(service: &[u8], args: &[u32]) -> Option<[u32; N]> {
    assert!(service.last() == Some(&0) && args.len() + N <= 10);
    // service, nargs, nret, then args and results: big-endian cells.
    let mut block = [0u32; 13];
    block[0] = (service.as_ptr() as u64 as u32).to_be();
    block[1] = (args.len() as u32).to_be();
    block[2] = (N as u32).to_be();
    for (cell, arg) in block[3..].iter_mut().zip(args) {
        *cell = arg.to_be();
    }
    // SAFETY: the block lives on this stack frame for the call, and every address in it (the
    // service name, and buffers named by callers through `getprop`) is below 4 GiB, readable and,
    // for buffers, writable for the lengths given.
    let (status, _) = unsafe { hcall(KVMPPC_H_VOF_CLIENT, [block.as_mut_ptr() as u64, 0, 0, 0, 0, 0]) };
    if status != 0 {
        return None;
    }
    let mut out = [0u32; N];
    for (value, cell) in out.iter_mut().zip(&block[3 + args.len()..]) {
        *value = u32::from_be(*cell);
    }
    Some(out)
}

/// The node at `path` (NUL-terminated).
pub fn find(path: &[u8]) -> Option<Node> {
    let [handle] = call::<1>(b"finddevice\0", &[path.as_ptr() as u64 as u32])?;
    (handle != 0 && handle != u32::MAX).then_some(Node(handle))
}

/// First child of `node`.
pub fn child(node: Node) -> Option<Node> {
    let [handle] = call::<1>(b"child\0", &[node.0])?;
    (handle != 0 && handle != u32::MAX).then_some(Node(handle))
}

/// Next sibling of `node`.
pub fn peer(node: Node) -> Option<Node> {
    let [handle] = call::<1>(b"peer\0", &[node.0])?;
    (handle != 0 && handle != u32::MAX).then_some(Node(handle))
}

/// Copies property `name` (NUL-terminated) of `node` into `buffer`; returns its full length.
pub fn getprop(node: Node, name: &[u8], buffer: &mut [u8]) -> Option<usize> {
    let args = [node.0, name.as_ptr() as u64 as u32, buffer.as_mut_ptr() as u64 as u32, buffer.len() as u32];
    let [len] = call::<1>(b"getprop\0", &args)?;
    (len != u32::MAX).then_some(len as usize)
}

/// Property `name` as big-endian 32-bit cells, up to `N` of them; returns the cells and how many
/// the property has.
pub fn cells<const N: usize>(node: Node, name: &[u8]) -> Option<([u32; N], usize)> {
    let mut bytes = [[0u8; 4]; N];
    let len = getprop(node, name, bytes.as_flattened_mut())?;
    let mut cells = [0u32; N];
    for (cell, raw) in cells.iter_mut().zip(&bytes) {
        *cell = u32::from_be_bytes(*raw);
    }
    Some((cells, len / 4))
}

/// A one-cell property.
pub fn u32_prop(node: Node, name: &[u8]) -> Option<u32> {
    cells::<1>(node, name).filter(|(_, n)| *n >= 1).map(|(cells, _)| cells[0])
}

/// The node's name (its `name` property) into `buffer`, without the NUL.
pub fn name<'a>(node: Node, buffer: &'a mut [u8]) -> &'a str {
    let len = getprop(node, b"name\0", buffer).unwrap_or(0).min(buffer.len());
    let text = &buffer[..len];
    let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(text).unwrap_or("?")
}

/// The children of `node`.
pub fn children(node: Node) -> impl Iterator<Item = Node> {
    let mut next = child(node);
    core::iter::from_fn(move || {
        let current = next?;
        next = peer(current);
        Some(current)
    })
}
