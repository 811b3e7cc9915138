# Heliotrope's test guest: a boot sector that enters 32-bit protected mode
# and then, forever, increments one byte in every 4 KiB page from 1 MiB to
# 100 MiB, writing 'B' to the first serial port after each pass. It keeps
# rewriting ~99 MiB, so a live migration converges only with bandwidth to
# spare, and its serial output shows it runs on after a migration.
#
# Built by `guest::boot_image`: as --32, then ld -m elf_i386
# -Ttext=0x7c00 --oformat binary, padded to 1 MiB.

    .code16
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    # A20 on through the fast gate (bit 1 of port 0x92), never the reset bit.
    in $0x92, %al
    or $2, %al
    and $0xfe, %al
    out %al, $0x92
    lgdt gdt_descriptor
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmp $0x08, $protected

    .code32
protected:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %esp
pass:
    mov $0x100000, %edi
page:
    incb (%edi)
    add $0x1000, %edi
    cmp $0x6400000, %edi
    jb page
    mov $0x3f8, %dx
    mov $'B', %al
    out %al, %dx
    jmp pass

    .p2align 3
gdt:
    .quad 0
    # Flat 4 GiB code (0x08) and data (0x10) segments.
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
gdt_descriptor:
    .word gdt_descriptor - gdt - 1
    .long gdt

    .org 510
    .word 0xaa55
