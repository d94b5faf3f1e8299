/* memset/memcpy for the freestanding guest: the compiler may emit calls to
 * them for struct copies and zeroing. Written with rep string instructions
 * so the compiler cannot turn them back into calls to themselves. */
#include "guest/guest.h"

void *memset(void *destination, int value, size_t length)
{
    void *cursor = destination;
    __asm__ volatile("rep stosb" : "+D"(cursor), "+c"(length) : "a"(value) : "memory");
    return destination;
}

void *memcpy(void *destination, const void *source, size_t length)
{
    void *cursor = destination;
    __asm__ volatile("rep movsb" : "+D"(cursor), "+S"(source), "+c"(length) : : "memory");
    return destination;
}
