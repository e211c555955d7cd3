// Package console is eventline's web console: an http.Handler that shows every projection (each
// version and partition: owner, position, head, lag in events and in seconds with a chart of the
// last minutes, role, state, last error), the projections' lifecycle records, the live runner
// processes and the dead letters, and, when allowed, pauses, resumes and rebuilds projections and
// retries and discards dead letters. 'eventline ui' serves it; a service can mount it too:
//
//	h, err := console.New(console.Config{Pool: pool})
//	mux.Handle("/eventline/", http.StripPrefix("/eventline", h))
//
// The page is plain HTML, CSS and JavaScript embedded in the binary. It polls a JSON endpoint
// every PollInterval and keeps the lag history for its chart itself, so the handler holds no
// state and starts no goroutine. It reads and acts through the same code as the CLI
// (internal/admin): the same snapshot, the same lifecycle transitions with the same refusals.
//
// # Actions and their protection
//
// The console is read-only unless Config.AllowActions is set; then Config.Token is required,
// and every action must carry it in the X-Eventline-Token header (compared in constant time).
// Actions are POST requests only, so a page of another origin cannot make a browser send one: a
// cross-origin request with a custom header needs a CORS preflight the console never grants,
// and cross-origin POSTs are refused outright (http.CrossOriginProtection). The page asks for the
// token, or takes it from the URL's fragment (#token=...), which browsers do not send to servers;
// it keeps it in the tab's sessionStorage.
//
// Endpoints, relative to where the handler is mounted:
//
//	GET  /                                   the page (and its assets under /assets/)
//	GET  /api/status                         {"console": {...}, "status": {...}, "problems": [...], "dead_letters": [...]}
//	POST /api/projections/{name}/{action}    action: pause, resume or rebuild
//	POST /api/dead-letters/{id}/{action}     action: retry or discard
//
// An action answers {"message": "..."} with 200, or {"error": "..."} with 400 (bad request), 403
// (actions disabled, token missing or wrong, cross-origin), 404 (no such projection or dead
// letter), 409 (refused by the lifecycle: rebuild of a detached handler or of a projection without
// Reset) or 500.
package console

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/eventline/eventline"
	"github.com/eventline/eventline/internal/admin"
)

// Defaults.
const (
	PollIntervalDefault = 2 * time.Second
	HistoryDefault      = 5 * time.Minute
)

// TokenHeader is the request header that carries the token of an action.
const TokenHeader = "X-Eventline-Token"

// Config configures a console Handler.
type Config struct {
	// Pool is the database the console reads and acts on. Required.
	Pool *pgxpool.Pool
	// Names names the tables, as for the store and runners of the installation (a Store's
	// Names()). Defaults to the zero eventline.Names: the default tables.
	Names eventline.Names
	// AllowActions lets the page pause, resume and rebuild projections and retry and discard
	// dead letters. Defaults to false: read-only.
	AllowActions bool
	// Token is the secret every action must carry in the X-Eventline-Token header. Required
	// when AllowActions is set. Defaults to "".
	Token string
	// PollInterval is how often the page reads the status. Defaults to 2s.
	PollInterval time.Duration
	// History is how far back the page's lag chart goes. Defaults to 5m.
	History time.Duration
	// Logger receives a line for every action, with its outcome and the client's address.
	// Defaults to discarding them (nil).
	Logger *zap.Logger
}

func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = PollIntervalDefault
	}
	if c.History == 0 {
		c.History = HistoryDefault
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Pool == nil:
		return errors.New("console config: Pool is required")
	case c.AllowActions && c.Token == "":
		return errors.New("console config: AllowActions needs a Token")
	case c.PollInterval < 100*time.Millisecond:
		return fmt.Errorf("console config: PollInterval must be at least 100ms, not %s", c.PollInterval)
	case c.History < c.PollInterval:
		return fmt.Errorf("console config: History (%s) must be at least PollInterval (%s)", c.History, c.PollInterval)
	}
	return nil
}

//go:embed assets
var assets embed.FS

// Handler serves the console. It is safe for concurrent use.
type Handler struct {
	cfg Config
	adm *admin.Admin
	mux *http.ServeMux
}

var _ http.Handler = (*Handler)(nil)

// New validates cfg and returns the console's handler.
func New(cfg Config) (*Handler, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	adm, err := admin.New(admin.Config{Names: cfg.Names})
	if err != nil {
		return nil, fmt.Errorf("console config: %w", err)
	}
	h := &Handler{cfg: cfg, adm: adm, mux: http.NewServeMux()}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	files := http.FileServerFS(static)
	h.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		noStore(w)
		http.ServeFileFS(w, r, static, "index.html")
	})
	h.mux.Handle("GET /assets/", http.StripPrefix("/assets", noStoreHandler(files)))
	h.mux.HandleFunc("GET /api/status", h.status)
	actions := http.NewServeMux()
	actions.HandleFunc("POST /api/projections/{name}/{action}", h.projectionAction)
	actions.HandleFunc("POST /api/dead-letters/{id}/{action}", h.deadLetterAction)
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "cross-origin request refused")
	}))
	guarded := cop.Handler(h.authorize(actions))
	h.mux.Handle("POST /api/", guarded)
	return h, nil
}

// ServeHTTP serves the page, its assets and the API.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	h.mux.ServeHTTP(w, r)
}

// consoleInfo tells the page how the console is set up.
type consoleInfo struct {
	Actions        bool  `json:"actions"`
	PollIntervalMS int64 `json:"poll_interval_ms"`
	HistorySeconds int64 `json:"history_seconds"`
}

type statusResponse struct {
	Console consoleInfo    `json:"console"`
	Status  admin.Snapshot `json:"status"`
	// Problems is what 'eventline status --check' would report, without a lag bound.
	Problems []admin.Problem `json:"problems"`
	// DeadLetters are the first deadLettersShown dead letters, of DeadLettersTotal.
	DeadLetters      []admin.DeadLetter `json:"dead_letters"`
	DeadLettersTotal int64              `json:"dead_letters_total"`
}

// deadLettersShown bounds the dead letters the status endpoint lists (the page says how many
// there are in all; 'eventline dead-letters list' lists them all).
const deadLettersShown = 200

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	// One transaction: the list agrees with the total.
	s, dls, err := h.adm.SnapshotWithDeadLetters(ctx, h.cfg.Pool, deadLettersShown)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "read status: "+err.Error())
		return
	}
	problems := s.Check(admin.Bounds{})
	if problems == nil {
		problems = []admin.Problem{}
	}
	writeJSON(w, http.StatusOK, statusResponse{
		Console: consoleInfo{
			Actions: h.cfg.AllowActions, PollIntervalMS: h.cfg.PollInterval.Milliseconds(),
			HistorySeconds: int64(h.cfg.History.Seconds()),
		},
		Status: s, Problems: problems, DeadLetters: dls, DeadLettersTotal: s.DeadLetters,
	})
}

func noStore(w http.ResponseWriter) { w.Header().Set("Cache-Control", "no-store") }

func noStoreHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		noStore(w)
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	noStore(w)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n')) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
