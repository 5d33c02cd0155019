# LLVM/MLIR 19 from Debian, used only through the shared libMLIR.so and
# libLLVM.so. The static libMLIR*.a / libLLVM*.a archives carry their own copy
# of every TypeID and cl::opt: mixed with the shared libraries they link, then
# fail at run time with registration errors. So link nothing but the `MLIR` and
# `LLVM` targets, and no add_mlir_*_library (those pull the archives in).
# The version is not decoration: LLVM 14's config is also on the default search
# path here and would be taken first. Their version files accept only 19.1.x.
find_package(LLVM 19.1 REQUIRED CONFIG PATHS /usr/lib/llvm-19/lib/cmake/llvm)
find_package(MLIR 19.1 REQUIRED CONFIG PATHS /usr/lib/llvm-19/lib/cmake/mlir)
message(STATUS "kiln: LLVM ${LLVM_PACKAGE_VERSION} from ${LLVM_DIR}")
message(STATUS "kiln: MLIR from ${MLIR_DIR}")

# LLVM is built with RTTI and without exceptions. Our TUs keep exceptions on:
# that is safe as long as no exception unwinds through LLVM/MLIR frames, so
# callbacks handed to MLIR (diagnostic handlers, pass bodies) must not throw.
separate_arguments(KILN_LLVM_DEFINITIONS NATIVE_COMMAND "${LLVM_DEFINITIONS}")

# Everything an MLIR-touching library needs; link it PUBLIC from kiln_ir.
add_library(kiln_mlir_deps INTERFACE)
# SYSTEM: our -Wall -Wextra should not report on LLVM's headers.
target_include_directories(kiln_mlir_deps SYSTEM INTERFACE
  ${LLVM_INCLUDE_DIRS} ${MLIR_INCLUDE_DIRS})
target_compile_definitions(kiln_mlir_deps INTERFACE ${KILN_LLVM_DEFINITIONS})
# The imported `MLIR` target names libLLVM.so only as a run-time dependency,
# so `MLIR` alone leaves LLVM's symbols unresolved: list both.
target_link_libraries(kiln_mlir_deps INTERFACE MLIR LLVM)
