# Writes the bytes of IN as a C array into OUT (cmake -DIN=... -DOUT=... -P).
# Used to embed lua/txmq/handler.lua into libtxmq.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE ${OUT}.tmp
"/* Generated from ${IN} by core/script/embed.cmake. Do not edit. */
#include <stddef.h>
const unsigned char txmq__handler_lua[] = {
${bytes}0x00};
const size_t txmq__handler_lua_len = ${len};
")
file(RENAME ${OUT}.tmp ${OUT})
