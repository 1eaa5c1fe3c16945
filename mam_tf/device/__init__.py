"""Cortex-M7 tooling: the firmware build (arm-none-eabi-gcc + CMake), runs on QEMU's emulated
mps2-an500, and instruction counts through a QEMU plugin (:mod:`.mcu`); the measuring of layers
and converted models on it (:mod:`.measure`)."""
