/*
 * Console text from the guest. Ring 3 sends whole lines through the doorbell
 * (RINGVM_CMD_CONSOLE_WRITE, one native MMIO exit per line). Without a
 * doorbell (PVH boot under another VMM, e.g. QEMU) it falls back to the
 * DPL-3 console gate, which writes the 8250 from ring 0 one byte at a time.
 * The text helpers are plain C and are also used by ring 0 for the banner.
 */
#include "guest/guest.h"

void text_reset(struct text *text)
{
    text->length = 0;
}

static void text_append_char(struct text *text, char c)
{
    if (text->length < sizeof(text->data))
        text->data[text->length++] = c;
}

void text_append(struct text *text, const char *string)
{
    while (*string)
        text_append_char(text, *string++);
}

void text_append_u64(struct text *text, uint64_t value)
{
    char digits[20];
    unsigned count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0)
        text_append_char(text, digits[--count]);
}

void text_append_hex(struct text *text, uint64_t value)
{
    static const char hex[] = "0123456789abcdef";
    text_append(text, "0x");
    int shift = 60;
    while (shift > 0 && ((value >> shift) & 0xf) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        text_append_char(text, hex[(value >> shift) & 0xf]);
}

void console_write(const struct ringvm_bootinfo *info, const char *data, uint64_t length)
{
    if (length > RINGVM_PAGE_SIZE)
        length = RINGVM_PAGE_SIZE;
    if (info->doorbell_gpa != 0) {
        doorbell_send(info, RINGVM_CMD_CONSOLE_WRITE, (uint64_t)(uintptr_t)data | (length << 48));
        return;
    }
    __asm__ volatile("int $" GUEST_STRINGIFY(GUEST_VECTOR_CONSOLE) : : "D"(data), "S"(length) : "memory");
}

void console_write_text(const struct ringvm_bootinfo *info, const struct text *text)
{
    console_write(info, text->data, text->length);
}
