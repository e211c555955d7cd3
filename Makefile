# Targets marked with ## are listed by `make` (or `make help`).

GO            ?= go
TEST_TIMEOUT  ?= 10m
BENCH_TIMEOUT ?= 60m
# The benchmarks measure a fixed workload inside one iteration and print their own tables;
# packages run one at a time (-p 1) so that they do not disturb each other.
BENCHTIME     ?= 1x
BENCH         ?= .
PKG           ?= ./...
STATICCHECK   ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.DEFAULT_GOAL := help
.PHONY: help build test test/race test/short bench soak demo lint tidy

help: ## List the targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_\/.-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## Build every package
	$(GO) build $(PKG)

test: test/race ## Run all tests with the race detector (gets a database: see internal/pgtest)

test/race: ## Run all tests with the race detector
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKG)

test/short: ## Run the quick tests (-short, no race detector)
	$(GO) test -short -count=1 -timeout $(TEST_TIMEOUT) $(PKG)

bench: ## Run the benchmarks, which print their own comparison tables
	$(GO) test -p 1 -run '^$$' -bench '$(BENCH)' -benchtime=$(BENCHTIME) -benchmem -count=1 -timeout $(BENCH_TIMEOUT) $(PKG)

SOAK_DURATION ?= 5m
soak: ## Run the lifecycle model test for SOAK_DURATION (default 5m); EVENTLINE_MODEL_SEED replays a seed
	EVENTLINE_MODEL_DURATION=$(SOAK_DURATION) $(GO) test -race -count=1 -timeout 0 -run '^TestLifecycleModel$$' -v ./runner

# Built, then run directly rather than with go run: go run exits with status 1 when it receives
# Ctrl-C, even when the program stops cleanly.
DEMO_ARGS ?=
demo: ## Run the demo (examples/demo; DEMO_ARGS='-duration 30s' passes flags); Ctrl-C stops it
	$(GO) build -o bin/demo ./examples/demo
	exec ./bin/demo $(DEMO_ARGS)

lint: ## Run go vet, gofmt and staticcheck
	$(GO) vet $(PKG)
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -l lists files to format:"; echo "$$unformatted"; exit 1; fi
	$(GO) run $(STATICCHECK) $(PKG)

tidy: ## Fail if go mod tidy would change go.mod or go.sum
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy and commit the result"; exit 1; }
