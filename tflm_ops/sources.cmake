# The core's source lists, in one place for every build that compiles it: tflm_ops/CMakeLists.txt
# (host), firmware/CMakeLists.txt (Cortex-M7) and a user's own CMake firmware project:
#
#   include(path/to/tflm_ops/sources.cmake)
#   target_sources(app PRIVATE ${MAM_SPARSE_CORE_SOURCES} ${MAM_SPARSE_CORTEX_M_SOURCES})
#   target_include_directories(app PRIVATE ${MAM_SPARSE_INCLUDE_DIR})
#
# MAM_SPARSE_CORE_SOURCES    the portable core (C99): reference kernels, validation, fixed point,
#                            messages, and the entry points choosing a kernel at compile time
# MAM_SPARSE_CORTEX_M_SOURCES the ARMv7E-M kernels (compile to nothing without __ARM_FEATURE_DSP)
# MAM_SPARSE_GLUE_SOURCES    the TFLite-Micro glue (C++17, needs TFLM's headers)
# MAM_SPARSE_INCLUDE_DIR     the public header's folder (mam_sparse/core.h)
# MAM_SPARSE_GLUE_INCLUDE_DIR the glue's header's folder (mam_sparse_op.h)
set(_mam_ops "${CMAKE_CURRENT_LIST_DIR}")
set(MAM_SPARSE_CORE_SOURCES
    ${_mam_ops}/src/fixed_point.c
    ${_mam_ops}/src/format.c
    ${_mam_ops}/src/validate.c
    ${_mam_ops}/src/reference_kernels.c
    ${_mam_ops}/src/kernel_select.c)
set(MAM_SPARSE_CORTEX_M_SOURCES ${_mam_ops}/src/cortex_m/sparse_kernels.c)
set(MAM_SPARSE_GLUE_SOURCES ${_mam_ops}/tflm/mam_sparse_op.cc)
set(MAM_SPARSE_INCLUDE_DIR ${_mam_ops}/include)
set(MAM_SPARSE_GLUE_INCLUDE_DIR ${_mam_ops}/tflm)
unset(_mam_ops)
