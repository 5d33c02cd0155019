# cmake -DINPUT=file -DOUTPUT=header -DNAME=symbol [-DPTX=file.ptx] -P embed.cmake
# Writes `file` as an 8-byte aligned byte array (fatbins hold 64-bit fields)
# and, from the PTX nvcc kept, the names of its kernels (for tests).
file(READ ${INPUT} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
set(names "")
if(PTX)
  file(STRINGS ${PTX} entries REGEX "\\.entry [A-Za-z0-9_]+")
  foreach(line ${entries})
    string(REGEX REPLACE ".*\\.entry ([A-Za-z0-9_]+).*" "\"\\1\"," entry "${line}")
    string(APPEND names "${entry}")
  endforeach()
endif()
file(WRITE ${OUTPUT}.tmp "// Generated from ${INPUT}\nalignas(8) static const unsigned char ${NAME}[] = {${bytes}};\n"
     "static const char* const ${NAME}_kernels[] = {${names}nullptr};\n")
file(RENAME ${OUTPUT}.tmp ${OUTPUT})
