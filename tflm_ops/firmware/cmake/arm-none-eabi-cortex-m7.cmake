# CMake toolchain file: arm-none-eabi-gcc for a Cortex-M7 (Thumb-2, FPv5-D16, hard float),
# bare metal, newlib with semihosting (librdimon).
#
#   cmake -S tflm_ops/firmware -B build/fw \
#         -DCMAKE_TOOLCHAIN_FILE=tflm_ops/firmware/cmake/arm-none-eabi-cortex-m7.cmake
#
# ARM_NONE_EABI_PREFIX overrides the tool prefix (default: arm-none-eabi-, found on PATH).
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR cortex-m7)

if(NOT ARM_NONE_EABI_PREFIX)
  set(ARM_NONE_EABI_PREFIX arm-none-eabi-)
endif()
set(CMAKE_C_COMPILER ${ARM_NONE_EABI_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${ARM_NONE_EABI_PREFIX}g++)
set(CMAKE_ASM_COMPILER ${ARM_NONE_EABI_PREFIX}gcc)
set(CMAKE_OBJCOPY ${ARM_NONE_EABI_PREFIX}objcopy CACHE FILEPATH "objcopy")
set(CMAKE_SIZE ${ARM_NONE_EABI_PREFIX}size CACHE FILEPATH "size")

# A bare-metal compiler cannot link a test program without a linker script.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

set(MAM_CPU_FLAGS "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard")
set(CMAKE_C_FLAGS_INIT "${MAM_CPU_FLAGS} -ffunction-sections -fdata-sections")
set(CMAKE_CXX_FLAGS_INIT "${MAM_CPU_FLAGS} -ffunction-sections -fdata-sections")
set(CMAKE_ASM_FLAGS_INIT "${MAM_CPU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${MAM_CPU_FLAGS} --specs=rdimon.specs -nostartfiles -Wl,--gc-sections")

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
