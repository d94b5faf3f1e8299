# ---- make soak (tests/soak, not part of make test) ---------------------------
# Ping-pong live migration between two network namespaces for DURATION
# seconds (default 600); see tests/soak/soak.sh. Needs root.
#   make soak DURATION=600 [SOAK_RATE=1gbit] [SOAK_LINUX=0] [SOAK_DOWNTIME_MS=300]
# With SOAK_LINUX=1 (the default) a Linux guest (make linux-guest) hops too.
DURATION   ?= 600
SOAK_RATE  ?= 1gbit
SOAK_LINUX ?= 1
SOAK_DOWNTIME_MS ?= 300
.PHONY: soak
soak:
	@$(MAKE) --no-print-directory all $(if $(filter 1,$(SOAK_LINUX)),linux-guest)
	tests/soak/soak.sh --duration $(DURATION) --build $(BUILD) $(if $(SOAK_RATE),--rate $(SOAK_RATE)) \
		--downtime-ms $(SOAK_DOWNTIME_MS) \
		$(if $(filter 1,$(SOAK_LINUX)),--linux $(BUILD)/linux)
