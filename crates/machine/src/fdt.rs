//! The flattened device tree handed to the kernel in a1.
//!
//! Models QEMU's `virt` board with what this machine has: one hart (ISA: [`ISA_EXTENSIONS`])
//! with Sv39 and a `riscv,cpu-intc` (Linux `Documentation/devicetree/bindings/riscv/cpus.yaml`),
//! RAM, the PLIC with only hart 0's S-mode external interrupt (9) in `interrupts-extended`
//! (there is no M-mode; `sifive,plic-1.0.0.yaml`), the ns16550a UART (`8250.yaml`), `/chosen`
//! with `bootargs`, the initrd range and `stdout-path` (`chosen.yaml`), and one node per extra
//! device window (e.g. `virtio_mmio@10001000`, `virtio-mmio.yaml`). There is no CLINT: the
//! timer and IPIs go through the SBI.

use vm_fdt::FdtWriter;

use crate::layout::{
    PLIC_BASE, PLIC_NUM_SOURCES, PLIC_SIZE, RAM_BASE, TIMEBASE_HZ, UART_BASE, UART_CLOCK_HZ,
    UART_IRQ, UART_SIZE,
};

/// Phandle of hart 0's node.
const PHANDLE_CPU0: u32 = 1;
/// Phandle of hart 0's interrupt controller (`riscv,cpu-intc`).
const PHANDLE_CPU0_INTC: u32 = 2;
/// Phandle of the PLIC.
const PHANDLE_PLIC: u32 = 3;
/// The S-mode external interrupt number at the hart's interrupt controller.
const IRQ_S_EXT: u32 = 9;
/// The ISA extensions the hart implements, the single source of the device tree's
/// `riscv,isa`, `riscv,isa-base` and `riscv,isa-extensions` (Linux
/// `Documentation/devicetree/bindings/riscv/extensions.yaml`): single-letter extensions in the
/// canonical order of the Unprivileged ISA's naming chapter (i m a f d c), then multi-letter
/// ones. Only what the hart really implements: Linux believes this list.
pub const ISA_EXTENSIONS: &[&str] = &["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei"];

/// `riscv,isa-base` of the hart.
pub const ISA_BASE: &str = "rv64i";

/// `riscv,isa` of the hart: `rv64`, the single-letter extensions, then `_` and each
/// multi-letter one, e.g. `rv64imafdc_zicntr_zicsr_zifencei`.
pub fn isa_string() -> String {
    let mut isa = String::from("rv64");
    for ext in ISA_EXTENSIONS {
        if ext.len() > 1 {
            isa.push('_');
        }
        isa.push_str(ext);
    }
    isa
}

/// An extra device-tree node under `/soc` for a device window added to the bus.
///
/// The node is named `{name}@{base:x}` and gets `compatible`, `reg = <base len>` (two cells
/// each) and, with an interrupt, `interrupts = <irq>` and `interrupt-parent = <&plic>`. A
/// virtio-mmio transport is `DeviceNode::virtio_mmio(base, irq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// Node name without the unit address, e.g. `"virtio_mmio"`.
    pub name: String,
    /// The `compatible` string, e.g. `"virtio,mmio"`.
    pub compatible: String,
    /// Window base (guest-physical byte address).
    pub base: u64,
    /// Window length in bytes.
    pub len: u64,
    /// PLIC source (1..=63), if the device interrupts.
    pub irq: Option<u32>,
}

impl DeviceNode {
    /// A `virtio,mmio` node for a transport window of [`crate::layout::VIRTIO_MMIO_SIZE`]
    /// bytes at `base` raising PLIC source `irq` (virtio v1.4 §4.2 "Virtio Over MMIO").
    pub fn virtio_mmio(base: u64, irq: u32) -> Self {
        Self {
            name: "virtio_mmio".into(),
            compatible: "virtio,mmio".into(),
            base,
            len: crate::layout::VIRTIO_MMIO_SIZE,
            irq: Some(irq),
        }
    }
}

/// Inputs of the device tree.
pub(crate) struct FdtParams<'a> {
    pub ram_size: u64,
    pub cmdline: &'a str,
    /// `[start, end)` of the initrd, guest-physical.
    pub initrd: Option<(u64, u64)>,
    pub nodes: &'a [DeviceNode],
    /// Bytes for `/chosen/rng-seed` (seeds the guest's random pool early, as QEMU does).
    pub rng_seed: &'a [u8],
}

/// Builds the device tree blob.
pub(crate) fn build(p: &FdtParams<'_>) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "vmmio,riscv-machine")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", p.cmdline)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART_BASE:x}"))?;
    if let Some((start, end)) = p.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    if !p.rng_seed.is_empty() {
        f.property("rng-seed", p.rng_seed)?;
    }
    f.end_node(chosen)?;

    let aliases = f.begin_node("aliases")?;
    f.property_string("serial0", &format!("/soc/serial@{UART_BASE:x}"))?;
    f.end_node(aliases)?;

    let memory = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[RAM_BASE, p.ram_size])?;
    f.end_node(memory)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    // The `time` CSR frequency; fits u32 (10 MHz).
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    let cpu = f.begin_node("cpu@0")?;
    f.property_string("device_type", "cpu")?;
    f.property_u32("reg", 0)?;
    f.property_string("status", "okay")?;
    f.property_string("compatible", "riscv")?;
    f.property_string("riscv,isa", &isa_string())?;
    f.property_string("riscv,isa-base", ISA_BASE)?;
    f.property_string_list(
        "riscv,isa-extensions",
        ISA_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    )?;
    f.property_string("mmu-type", "riscv,sv39")?;
    f.property_phandle(PHANDLE_CPU0)?;
    let intc = f.begin_node("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("interrupt-controller")?;
    f.property_string("compatible", "riscv,cpu-intc")?;
    f.property_phandle(PHANDLE_CPU0_INTC)?;
    f.end_node(intc)?;
    f.end_node(cpu)?;
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[PLIC_BASE, PLIC_SIZE])?;
    f.property_u32("#address-cells", 0)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("interrupt-controller")?;
    f.property_array_u32("interrupts-extended", &[PHANDLE_CPU0_INTC, IRQ_S_EXT])?;
    f.property_u32("riscv,ndev", PLIC_NUM_SOURCES)?;
    f.property_phandle(PHANDLE_PLIC)?;
    f.end_node(plic)?;

    let serial = f.begin_node(&format!("serial@{UART_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    f.property_u32("interrupts", UART_IRQ)?;
    f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
    f.end_node(serial)?;

    for n in p.nodes {
        let node = f.begin_node(&format!("{}@{:x}", n.name, n.base))?;
        f.property_string("compatible", &n.compatible)?;
        f.property_array_u64("reg", &[n.base, n.len])?;
        if let Some(irq) = n.irq {
            f.property_u32("interrupts", irq)?;
            f.property_u32("interrupt-parent", PHANDLE_PLIC)?;
        }
        f.end_node(node)?;
    }
    f.end_node(soc)?;
    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tree_parses_back_with_the_expected_nodes() {
        let nodes = [DeviceNode::virtio_mmio(0x1000_1000, 1)];
        let blob = build(&FdtParams {
            ram_size: 256 << 20,
            cmdline: "console=ttyS0",
            initrd: Some((0x8400_0000, 0x8410_0000)),
            nodes: &nodes,
            rng_seed: &[1, 2, 3, 4],
        })
        .unwrap();
        let dt = fdt::Fdt::new(&blob).unwrap();
        assert_eq!(dt.chosen().bootargs(), Some("console=ttyS0"));
        assert_eq!(dt.chosen().stdout().unwrap().name, "serial@10000000");
        let mem = dt.memory().regions().next().unwrap();
        assert_eq!(mem.starting_address as u64, RAM_BASE);
        assert_eq!(mem.size, Some(256 << 20));
        let cpu = dt.cpus().next().unwrap();
        assert_eq!(cpu.timebase_frequency(), 10_000_000);
        assert_eq!(
            cpu.property("riscv,isa").unwrap().as_str(),
            Some("rv64imafdc_zicntr_zicsr_zifencei")
        );
        assert_eq!(
            cpu.property("riscv,isa-base").unwrap().as_str(),
            Some("rv64i")
        );
        let exts = cpu.property("riscv,isa-extensions").unwrap().value;
        let exts: Vec<&str> = std::str::from_utf8(exts)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(
            exts,
            ["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei"]
        );
        assert_eq!(
            cpu.property("mmu-type").unwrap().as_str(),
            Some("riscv,sv39")
        );
        let intc = dt.find_node("/cpus/cpu@0/interrupt-controller").unwrap();
        assert_eq!(intc.compatible().unwrap().first(), "riscv,cpu-intc");
        let chosen = dt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("linux,initrd-start").unwrap().as_usize(),
            Some(0x8400_0000)
        );
        assert_eq!(
            chosen.property("linux,initrd-end").unwrap().as_usize(),
            Some(0x8410_0000)
        );

        let plic = dt.find_compatible(&["sifive,plic-1.0.0"]).unwrap();
        let reg = plic.reg().unwrap().next().unwrap();
        assert_eq!(
            (reg.starting_address as u64, reg.size),
            (PLIC_BASE, Some(PLIC_SIZE as usize))
        );
        let ext = plic.property("interrupts-extended").unwrap().value;
        assert_eq!(
            ext,
            [0, 0, 0, 2, 0, 0, 0, 9],
            "only the S-mode external interrupt"
        );
        assert_eq!(plic.property("riscv,ndev").unwrap().as_usize(), Some(63));

        let uart = dt.find_compatible(&["ns16550a"]).unwrap();
        assert_eq!(uart.name, "serial@10000000");
        assert_eq!(uart.interrupts().unwrap().next(), Some(10));
        assert_eq!(
            uart.property("clock-frequency").unwrap().as_usize(),
            Some(3_686_400)
        );

        let virtio = dt.find_node("/soc/virtio_mmio@10001000").unwrap();
        assert_eq!(virtio.compatible().unwrap().first(), "virtio,mmio");
        let reg = virtio.reg().unwrap().next().unwrap();
        assert_eq!(
            (reg.starting_address as u64, reg.size),
            (0x1000_1000, Some(0x1000))
        );
        assert_eq!(virtio.interrupts().unwrap().next(), Some(1));
        assert_eq!(virtio.interrupt_parent().unwrap().name, "plic@c000000");
    }

    #[test]
    fn no_initrd_means_no_initrd_properties() {
        let blob = build(&FdtParams {
            ram_size: 64 << 20,
            cmdline: "",
            initrd: None,
            nodes: &[],
            rng_seed: &[],
        })
        .unwrap();
        let dt = fdt::Fdt::new(&blob).unwrap();
        assert!(dt
            .find_node("/chosen")
            .unwrap()
            .property("linux,initrd-start")
            .is_none());
    }
}
