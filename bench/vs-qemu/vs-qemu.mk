# bench/vs-qemu: ringvm vs QEMU 7.2 live migration on the same guest and
# matrix (bench/vs-qemu/run.py, Python 3 stdlib). Included by the top-level
# Makefile (`-include bench/vs-qemu/vs-qemu.mk`); never part of `make test`.
#
#   make bench-deps                     qemu-system-x86, gnuplot-nox, python3
#   make bench-vs-qemu                  the full matrix (long: hours)
#   make bench-vs-qemu VS_QEMU_ARGS=--quick
#   make bench-vs-qemu VS_QEMU_ARGS='--wss 256M --bandwidth 0 --reps 5 --json out.json'
#   make bench-vs-qemu VS_QEMU_ARGS='--wss 256M --bandwidth 125 --converge none --tracking ring --mode postcopy,hybrid --reps 2'

VS_QEMU_ARGS ?=

.PHONY: bench-deps bench-vs-qemu
bench-deps:
	@scripts/install-deps.sh --bench

bench-vs-qemu: bench-deps
	@$(MAKE) --no-print-directory all $(BUILD)/guest/ringvm-guest.elf
	python3 bench/vs-qemu/run.py --build $(BUILD) $(VS_QEMU_ARGS)
