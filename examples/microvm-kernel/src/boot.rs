//! Start-up: the PVH entry note, 32-bit entry, identity paging of the low
//! 4 GiB with 2 MiB pages, long mode, SSE, a stack, then `kmain`.
//!
//! QEMU (PVH boot, `XEN_ELFNOTE_PHYS32_ENTRY`) enters `pvh_start` in 32-bit
//! protected mode with paging off, interrupts off, and `ebx` holding the
//! physical address of the `hvm_start_info` block (which names the
//! command line).

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz: a 32-bit address */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long pvh_start
    .p2align 2

    .section .boot.text, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov esi, ebx                /* hvm_start_info, kept for kmain */

    /* Zero .bss (page tables and stacks live there). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories. */
    mov eax, offset boot_pdpt
    or eax, 3
    mov [boot_pml4], eax
    mov ecx, 0
2:  mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov [boot_pdpt + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jne 2b

    /* 2048 2 MiB pages: identity map of 0..4 GiB. The top 32 MiB (virtio
       windows, I/O APIC, local APIC) are uncached (PCD | PWT). */
    mov ecx, 0
3:  mov eax, ecx
    shl eax, 21
    or eax, 0x83                /* present, writable, 2 MiB page */
    cmp ecx, 2032
    jb 4f
    or eax, 0x18                /* PWT | PCD */
4:  mov [boot_pd + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jne 3b

    mov eax, offset boot_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x620               /* PAE | OSFXSR | OSXMMEXCPT */
    mov cr4, eax
    mov ecx, 0xc0000080         /* EFER */
    rdmsr
    or eax, 0x100               /* LME */
    wrmsr
    mov eax, cr0
    and eax, 0xfffffffb         /* clear EM: SSE instructions allowed */
    or eax, 0x80000003          /* PG | MP | PE */
    mov cr0, eax

    lgdt [gdt64_ptr]
    mov eax, 0x08
    push eax
    mov eax, offset long_mode
    push eax
    retf                        /* far return into the 64-bit code segment */

    .code64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + boot_stack_top]
    mov edi, esi                /* kmain(start_info) */
    call kmain
5:  cli
    hlt
    jmp 5b

    .section .data
    .p2align 4
    .global gdt64
gdt64:
    .quad 0                     /* null */
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0                     /* 0x18: TSS, low half (filled by arch::init) */
    .quad 0                     /*       TSS, high half */
gdt64_end:
gdt64_ptr:
    .word gdt64_end - gdt64 - 1
    .quad gdt64

    .section .bss
    .p2align 12
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4096 * 4
    .p2align 4
boot_stack: .skip 64 * 1024
boot_stack_top:
"#
);
