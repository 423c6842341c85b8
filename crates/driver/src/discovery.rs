//! Finding virtio-mmio windows (virtio v1.4 §4.2.1 "MMIO Device
//! Discovery"): Linux's `virtio_mmio.device=` kernel parameter and
//! device-tree nodes with `compatible = "virtio,mmio"`.
//!
//! Both parsers take input from the platform, not the device, but are
//! written as total functions all the same: malformed input is an error,
//! never a panic or a silent truncation.

use alloc::string::String;
use alloc::vec::Vec;

use fdt::node::FdtNode;
use fdt::Fdt;

/// Why discovery input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A number was missing or malformed; the text is given.
    #[error("malformed number in {0:?}")]
    BadNumber(String),
    /// A number or `base + size` does not fit 64 bits; the text is given.
    #[error("value out of range in {0:?}")]
    Overflow(String),
    /// A `virtio_mmio.device=` value is not `<size>@<base>:<irq>[:<id>]`;
    /// the value is given.
    #[error("malformed virtio_mmio.device value {0:?}")]
    BadSyntax(String),
    /// The window size is 0.
    #[error("window size is 0")]
    ZeroSize,
    /// The device tree blob is invalid; the parser's reason is given.
    #[error("invalid device tree: {0}")]
    BadFdt(String),
    /// A node's `reg` property is missing or malformed; the node name is
    /// given.
    #[error("node {0}: missing or malformed reg")]
    BadReg(String),
    /// `#address-cells` / `#size-cells` outside 1..=2 (address) or 0..=2
    /// (size); the node name and values are given.
    #[error("node {node}: unsupported cell sizes {address}/{size}")]
    UnsupportedCells {
        /// Node name.
        node: String,
        /// `#address-cells` in force.
        address: u32,
        /// `#size-cells` in force.
        size: u32,
    },
}

/// One window named by `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineDevice {
    /// Physical base address of the window.
    pub base: u64,
    /// Window size in bytes (non-zero).
    pub size: u64,
    /// Interrupt number.
    pub irq: u32,
    /// Linux's optional platform device id (`:<id>`), if given.
    pub id: Option<u32>,
}

/// Parses an unsigned integer the way C's `strtoull(s, &end, 0)` does at
/// the start of `s`: `0x`/`0X` hexadecimal, a leading `0` octal, otherwise
/// decimal. Returns the value and the rest of `s`.
fn parse_c_number(s: &str) -> Result<(u64, &str), DiscoveryError> {
    let bytes = s.as_bytes();
    let (radix, start) = match bytes {
        [b'0', b'x' | b'X', c, ..] if c.is_ascii_hexdigit() => (16, 2),
        [b'0', ..] => (8, 0),
        _ => (10, 0),
    };
    let digits = s[start..]
        .bytes()
        .take_while(|c| char::from(*c).is_digit(radix))
        .count();
    if digits == 0 {
        return Err(DiscoveryError::BadNumber(s.into()));
    }
    let end = start + digits;
    let v = u64::from_str_radix(&s[start..end], radix)
        .map_err(|_| DiscoveryError::Overflow(s.into()))?;
    Ok((v, &s[end..]))
}

/// Parses a size the way Linux's `memparse` does: a C number (decimal,
/// `0x` hex or `0` octal) optionally followed by one suffix `K`, `M`, `G`,
/// `T`, `P` or `E` (either case), each a factor of 1024 more. Returns the
/// size in bytes and the rest of `s`.
///
/// # Errors
///
/// [`DiscoveryError::BadNumber`] without digits, and
/// [`DiscoveryError::Overflow`] when the value does not fit 64 bits
/// (Linux would wrap silently).
///
/// # Example
///
/// ```
/// use vmmio_driver::discovery::memparse;
/// assert_eq!(memparse("4K@x").unwrap(), (4096, "@x"));
/// assert_eq!(memparse("0x200").unwrap(), (0x200, ""));
/// ```
pub fn memparse(s: &str) -> Result<(u64, &str), DiscoveryError> {
    let (v, rest) = parse_c_number(s)?;
    let shift = match rest.as_bytes().first().map(u8::to_ascii_uppercase) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => return Ok((v, rest)),
    };
    let scaled = v
        .checked_mul(1u64 << shift)
        .ok_or_else(|| DiscoveryError::Overflow(s.into()))?;
    Ok((scaled, &rest[1..]))
}

/// Parses the value of one `virtio_mmio.device=` parameter,
/// `<size>@<base>:<irq>[:<id>]` as Linux's virtio_mmio driver documents
/// it: size with [`memparse`] suffixes, base and irq and id as C numbers.
///
/// # Errors
///
/// [`DiscoveryError::BadSyntax`] for a missing `@`/`:` or trailing text,
/// [`DiscoveryError::ZeroSize`], [`DiscoveryError::Overflow`] for numbers
/// (or `base + size`) out of range, [`DiscoveryError::BadNumber`].
///
/// # Example
///
/// ```
/// use vmmio_driver::discovery::{parse_device_param, CmdlineDevice};
/// assert_eq!(
///     parse_device_param("0x200@0x10001000:1").unwrap(),
///     CmdlineDevice { base: 0x1000_1000, size: 0x200, irq: 1, id: None }
/// );
/// ```
pub fn parse_device_param(value: &str) -> Result<CmdlineDevice, DiscoveryError> {
    let bad = || DiscoveryError::BadSyntax(value.into());
    let (size, rest) = memparse(value)?;
    let rest = rest.strip_prefix('@').ok_or_else(bad)?;
    let (base, rest) = parse_c_number(rest)?;
    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
    let (irq, rest) = parse_c_number(rest)?;
    let irq = u32::try_from(irq).map_err(|_| DiscoveryError::Overflow(value.into()))?;
    let id = match rest.strip_prefix(':') {
        Some(r) => {
            let (id, r) = parse_c_number(r)?;
            if !r.is_empty() {
                return Err(bad());
            }
            Some(u32::try_from(id).map_err(|_| DiscoveryError::Overflow(value.into()))?)
        }
        None if rest.is_empty() => None,
        None => return Err(bad()),
    };
    if size == 0 {
        return Err(DiscoveryError::ZeroSize);
    }
    // The last byte, base + size - 1, must be addressable.
    base.checked_add(size - 1)
        .ok_or_else(|| DiscoveryError::Overflow(value.into()))?;
    Ok(CmdlineDevice {
        base,
        size,
        irq,
        id,
    })
}

/// Every `virtio_mmio.device=` parameter of a kernel command line, in
/// order (Linux treats `-` and `_` alike in parameter names, so
/// `virtio-mmio.device=` counts too). Parameters are separated by ASCII
/// whitespace; one malformed parameter yields an error item and does not
/// stop the others.
///
/// # Example
///
/// ```
/// use vmmio_driver::discovery::cmdline_devices;
/// let cmdline = "console=ttyS0 virtio_mmio.device=4K@0x10001000:1 virtio_mmio.device=1M@0x2000000:5:3";
/// let found: Vec<_> = cmdline_devices(cmdline).collect::<Result<_, _>>().unwrap();
/// assert_eq!(found.len(), 2);
/// assert_eq!(found[1].id, Some(3));
/// ```
pub fn cmdline_devices(
    cmdline: &str,
) -> impl Iterator<Item = Result<CmdlineDevice, DiscoveryError>> + '_ {
    cmdline.split_ascii_whitespace().filter_map(|param| {
        let (name, value) = param.split_once('=')?;
        let canonical = name.bytes().map(|b| if b == b'-' { b'_' } else { b });
        canonical
            .eq(b"virtio_mmio.device".iter().copied())
            .then(|| parse_device_param(value))
    })
}

/// One device-tree node with `compatible = "virtio,mmio"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtDevice {
    /// The node name, e.g. `virtio_mmio@10001000`.
    pub name: String,
    /// Physical base address (first `reg` entry).
    pub base: u64,
    /// Window size in bytes (first `reg` entry).
    pub size: u64,
    /// The cells of the first `interrupts` specifier, in the format of the
    /// interrupt parent (one cell on a RISC-V PLIC: the source number);
    /// empty without `interrupts`.
    pub interrupt: Vec<u32>,
}

impl FdtDevice {
    /// The interrupt number when the specifier has one cell (PLIC-style),
    /// else `None`.
    pub fn irq(&self) -> Option<u32> {
        match self.interrupt.as_slice() {
            [irq] => Some(*irq),
            _ => None,
        }
    }
}

fn prop_u32(node: &FdtNode<'_, '_>, name: &str) -> Option<u32> {
    let v = node.property(name)?.value;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn read_cells(bytes: &[u8], cells: u32) -> Option<(u64, &[u8])> {
    let n = usize::try_from(cells).ok()?.checked_mul(4)?;
    let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
    let v = match cells {
        0 => 0,
        1 => u64::from(u32::from_be_bytes(head.try_into().ok()?)),
        2 => u64::from_be_bytes(head.try_into().ok()?),
        _ => return None,
    };
    Some((v, rest))
}

/// Cell sizes and interrupt parent in force for a node's children.
#[derive(Clone, Copy)]
struct Ctx {
    address_cells: u32,
    size_cells: u32,
    interrupt_parent: Option<u32>,
}

/// Finds every enabled node compatible with `"virtio,mmio"` in the
/// flattened device tree `dtb` (virtio v1.4 §4.2.1), in tree order. Nodes
/// whose `status` is neither absent, `"okay"` nor `"ok"` are skipped.
/// `#address-cells`, `#size-cells` and `interrupt-parent` are followed as
/// the devicetree specification says (inherited from the parent; the
/// interrupt parent's `#interrupt-cells` sizes the specifier, 1 when it
/// cannot be found). Tree depth is limited to 32 levels.
///
/// # Errors
///
/// [`DiscoveryError::BadFdt`] for a blob the `fdt` crate rejects,
/// [`DiscoveryError::BadReg`], [`DiscoveryError::UnsupportedCells`].
pub fn fdt_devices(dtb: &[u8]) -> Result<Vec<FdtDevice>, DiscoveryError> {
    let fdt = Fdt::new(dtb).map_err(|e| DiscoveryError::BadFdt(alloc::format!("{e:?}")))?;
    let root = fdt
        .find_node("/")
        .ok_or_else(|| DiscoveryError::BadFdt("no root node".into()))?;
    let mut out = Vec::new();
    let ctx = Ctx {
        address_cells: 2,
        size_cells: 1,
        interrupt_parent: None,
    };
    walk(&fdt, root, ctx, 0, &mut out)?;
    Ok(out)
}

fn walk(
    fdt: &Fdt<'_>,
    node: FdtNode<'_, '_>,
    parent: Ctx,
    depth: u32,
    out: &mut Vec<FdtDevice>,
) -> Result<(), DiscoveryError> {
    if depth > 32 {
        return Ok(());
    }
    let interrupt_parent = prop_u32(&node, "interrupt-parent").or(parent.interrupt_parent);
    let is_virtio = node
        .compatible()
        .is_some_and(|c| c.all().any(|s| s == "virtio,mmio"));
    let enabled = node
        .property("status")
        .and_then(|p| p.as_str())
        .is_none_or(|s| s == "okay" || s == "ok");
    if is_virtio && enabled {
        out.push(device_of(fdt, &node, parent, interrupt_parent)?);
    }
    let ctx = Ctx {
        address_cells: prop_u32(&node, "#address-cells").unwrap_or(2),
        size_cells: prop_u32(&node, "#size-cells").unwrap_or(1),
        interrupt_parent,
    };
    for child in node.children() {
        walk(fdt, child, ctx, depth + 1, out)?;
    }
    Ok(())
}

fn device_of(
    fdt: &Fdt<'_>,
    node: &FdtNode<'_, '_>,
    parent: Ctx,
    interrupt_parent: Option<u32>,
) -> Result<FdtDevice, DiscoveryError> {
    let name = String::from(node.name);
    if !(1..=2).contains(&parent.address_cells) || parent.size_cells > 2 {
        return Err(DiscoveryError::UnsupportedCells {
            node: name,
            address: parent.address_cells,
            size: parent.size_cells,
        });
    }
    let reg = node
        .property("reg")
        .ok_or_else(|| DiscoveryError::BadReg(name.clone()))?
        .value;
    let (base, rest) = read_cells(reg, parent.address_cells)
        .ok_or_else(|| DiscoveryError::BadReg(name.clone()))?;
    let (size, _) =
        read_cells(rest, parent.size_cells).ok_or_else(|| DiscoveryError::BadReg(name.clone()))?;
    let cells = interrupt_parent
        .and_then(|ph| fdt.find_phandle(ph))
        .and_then(|p| prop_u32(&p, "#interrupt-cells"))
        .unwrap_or(1);
    let interrupt = match node.property("interrupts") {
        Some(p) => {
            let n = usize::try_from(cells).unwrap_or(usize::MAX);
            p.value
                .chunks_exact(4)
                .take(n)
                .filter_map(|c| c.try_into().ok().map(u32::from_be_bytes))
                .collect()
        }
        None => Vec::new(),
    };
    Ok(FdtDevice {
        name,
        base,
        size,
        interrupt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memparse_suffixes_and_bases() {
        assert_eq!(memparse("512").unwrap(), (512, ""));
        assert_eq!(memparse("1k").unwrap(), (1024, ""));
        assert_eq!(memparse("2M").unwrap(), (2 << 20, ""));
        assert_eq!(memparse("1G@").unwrap(), (1 << 30, "@"));
        assert_eq!(memparse("1e").unwrap(), (1 << 60, ""));
        assert_eq!(memparse("010").unwrap(), (8, ""));
        assert_eq!(memparse("0x1fK").unwrap(), (31 << 10, ""));
        assert_eq!(memparse("0").unwrap(), (0, ""));
        assert_eq!(memparse("0x").unwrap(), (0, "x"));
        assert!(matches!(memparse("16E"), Err(DiscoveryError::Overflow(_))));
        assert!(matches!(
            memparse("99999999999999999999"),
            Err(DiscoveryError::Overflow(_))
        ));
        assert!(matches!(memparse("K"), Err(DiscoveryError::BadNumber(_))));
        assert!(matches!(memparse(""), Err(DiscoveryError::BadNumber(_))));
    }

    #[test]
    fn device_param_syntax() {
        assert_eq!(
            parse_device_param("1K@0x1e000:42:7").unwrap(),
            CmdlineDevice {
                base: 0x1e000,
                size: 1024,
                irq: 42,
                id: Some(7)
            }
        );
        for bad in [
            "",
            "1K",
            "1K@",
            "1K@0x100",
            "1K@0x100:",
            "1K@0x100:5x",
            "1K@0x100:5:",
            "1K@0x100:5:1:2",
            "@0x100:5",
            "1K@:5",
        ] {
            assert!(parse_device_param(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_device_param("0@0x100:5"),
            Err(DiscoveryError::ZeroSize)
        );
        assert!(matches!(
            parse_device_param("0x1000@0xfffffffffffff001:5"),
            Err(DiscoveryError::Overflow(_))
        ));
        assert!(parse_device_param("0x1000@0xfffffffffffff000:5").is_ok());
        assert!(matches!(
            parse_device_param("1K@0x100:4294967296"),
            Err(DiscoveryError::Overflow(_))
        ));
    }

    /// Oracle test: random well-formed parameters, printed in random
    /// number syntaxes, parse back to what was printed.
    #[test]
    fn device_param_round_trip_oracle() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let unit = next() % 4;
            let mult = (next() % 4096) + 1;
            let size = mult << (10 * unit);
            let base = next() % (u64::MAX - size);
            let irq = u32::try_from(next() % 1024).unwrap();
            let id = (next() % 2 == 0).then(|| u32::try_from(next() % 100).unwrap());
            let size_text = match (unit, next() % 2) {
                (0, 0) => alloc::format!("{size}"),
                (0, _) => alloc::format!("{size:#x}"),
                (u, _) => {
                    alloc::format!("{mult}{}", ["", "K", "m", "G"][usize::try_from(u).unwrap()])
                }
            };
            let base_text = match next() % 3 {
                0 => alloc::format!("{base:#x}"),
                1 => alloc::format!("0{base:o}"),
                _ => alloc::format!("{base}"),
            };
            let mut text = alloc::format!("{size_text}@{base_text}:{irq}");
            if let Some(id) = id {
                text.push_str(&alloc::format!(":{id}"));
            }
            let want = CmdlineDevice {
                base,
                size,
                irq,
                id,
            };
            assert_eq!(parse_device_param(&text), Ok(want), "{text}");
        }
    }

    #[test]
    fn cmdline_finds_every_param_and_keeps_going_after_errors() {
        let v: Vec<_> = cmdline_devices(
            "root=/dev/vda virtio-mmio.device=4K@0x1000:1 virtio_mmio.device=bogus \
             virtio_mmio.devices=1K@0:1 virtio_mmio.device=0x200@0x2000:2:0",
        )
        .collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].as_ref().unwrap().base, 0x1000);
        assert!(v[1].is_err());
        assert_eq!(v[2].as_ref().unwrap().id, Some(0));
    }
    /// A device tree shaped like QEMU's RISC-V `virt` board: a PLIC with
    /// one interrupt cell, virtio nodes under /soc with 2/2 cells.
    fn virt_like_dtb() -> Vec<u8> {
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let soc = w.begin_node("soc").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let plic = w.begin_node("plic@c000000").unwrap();
        w.property_string("compatible", "sifive,plic-1.0.0")
            .unwrap();
        w.property_u32("#interrupt-cells", 1).unwrap();
        w.property_phandle(3).unwrap();
        w.end_node(plic).unwrap();
        for (i, status) in [(1u64, None), (2, Some("disabled")), (3, Some("okay"))] {
            let n = w
                .begin_node(&alloc::format!("virtio_mmio@1000{i}000"))
                .unwrap();
            w.property_string("compatible", "virtio,mmio").unwrap();
            w.property_array_u64("reg", &[0x1000_0000 + i * 0x1000, 0x1000])
                .unwrap();
            w.property_u32("interrupt-parent", 3).unwrap();
            w.property_u32("interrupts", u32::try_from(i).unwrap())
                .unwrap();
            if let Some(st) = status {
                w.property_string("status", st).unwrap();
            }
            w.end_node(n).unwrap();
        }
        let uart = w.begin_node("serial@10000000").unwrap();
        w.property_string("compatible", "ns16550a").unwrap();
        w.end_node(uart).unwrap();
        w.end_node(soc).unwrap();
        // The spec's own example: 1/1 cells, no interrupt parent.
        let bus = w.begin_node("bus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        let blk = w.begin_node("virtio_block@1e000").unwrap();
        w.property_string_list(
            "compatible",
            alloc::vec!["vendor,thing".into(), "virtio,mmio".into()],
        )
        .unwrap();
        w.property_array_u32("reg", &[0x1e000, 0x200]).unwrap();
        w.property_u32("interrupts", 42).unwrap();
        w.end_node(blk).unwrap();
        w.end_node(bus).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn fdt_finds_enabled_virtio_mmio_nodes() {
        let found = fdt_devices(&virt_like_dtb()).unwrap();
        let summary: Vec<(&str, u64, u64, Option<u32>)> = found
            .iter()
            .map(|d| (d.name.as_str(), d.base, d.size, d.irq()))
            .collect();
        assert_eq!(
            summary,
            [
                ("virtio_mmio@10001000", 0x1000_1000, 0x1000, Some(1)),
                ("virtio_mmio@10003000", 0x1000_3000, 0x1000, Some(3)),
                ("virtio_block@1e000", 0x1e000, 0x200, Some(42)),
            ]
        );
    }

    #[test]
    fn fdt_garbage_is_an_error_not_a_panic() {
        assert!(matches!(fdt_devices(&[]), Err(DiscoveryError::BadFdt(_))));
        assert!(matches!(
            fdt_devices(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0, 0]),
            Err(DiscoveryError::BadFdt(_))
        ));
        let good = virt_like_dtb();
        for cut in [8, 40, good.len() / 2] {
            let _ = fdt_devices(&good[..cut]);
        }
    }

    #[test]
    fn fdt_bad_reg_and_cells_are_errors() {
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        let n = w.begin_node("v@0").unwrap();
        w.property_string("compatible", "virtio,mmio").unwrap();
        w.property_array_u32("reg", &[0, 0, 0, 1]).unwrap();
        w.end_node(n).unwrap();
        w.end_node(root).unwrap();
        assert!(matches!(
            fdt_devices(&w.finish().unwrap()),
            Err(DiscoveryError::UnsupportedCells { address: 3, .. })
        ));
        let mut w = vm_fdt::FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        let n = w.begin_node("v@0").unwrap();
        w.property_string("compatible", "virtio,mmio").unwrap();
        w.property_array_u32("reg", &[0, 1]).unwrap();
        w.end_node(n).unwrap();
        w.end_node(root).unwrap();
        assert_eq!(
            fdt_devices(&w.finish().unwrap()),
            Err(DiscoveryError::BadReg("v@0".into()))
        );
    }
}
