"""kvmnetd: a REST control-plane daemon for QEMU/KVM host networking and VMs."""

__version__ = "0.1.0"
