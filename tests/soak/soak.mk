# ---- make soak (tests/soak, not part of make test) ---------------------------
# Ping-pong live migration between two network namespaces for DURATION
# seconds (default 600); see tests/soak/soak.sh. Needs root.
#   make soak DURATION=600 [SOAK_RATE=1gbit]
DURATION  ?= 600
SOAK_RATE ?= 1gbit
.PHONY: soak
soak:
	@$(MAKE) --no-print-directory all
	tests/soak/soak.sh --duration $(DURATION) --build $(BUILD) $(if $(SOAK_RATE),--rate $(SOAK_RATE))
