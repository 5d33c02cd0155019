# cmake -DINPUT=file -DOUTPUT=header -DNAME=symbol -P embed.cmake
# Writes `file` as an 8-byte aligned byte array (fatbins hold 64-bit fields).
file(READ ${INPUT} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUTPUT}.tmp "// Generated from ${INPUT}\nalignas(8) static const unsigned char ${NAME}[] = {${bytes}};\n")
file(RENAME ${OUTPUT}.tmp ${OUTPUT})
