package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/eventline/eventline/internal/admin"
)

// authorize lets an action through only when actions are allowed and the request carries the
// token.
func (h *Handler) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refuse := func(msg string) {
			h.cfg.Logger.Warn("console action refused", zap.String("path", r.URL.Path),
				zap.String("remote", r.RemoteAddr), zap.String("reason", msg))
			writeError(w, http.StatusForbidden, msg)
		}
		switch given := r.Header.Get(TokenHeader); {
		case !h.cfg.AllowActions:
			refuse("the console is read-only: actions are allowed only when it is started with --allow-actions")
		case given == "":
			refuse("this action needs the console's token (" + TokenHeader + " header)")
		case !tokenEqual(given, h.cfg.Token):
			refuse("wrong token")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// tokenEqual compares in constant time; hashing first hides the token's length too.
func tokenEqual(given, want string) bool {
	g, w := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

func (h *Handler) projectionAction(w http.ResponseWriter, r *http.Request) {
	ctx, pool := r.Context(), h.cfg.Pool
	name, action := r.PathValue("name"), r.PathValue("action")
	if name == "" {
		writeError(w, http.StatusBadRequest, "empty projection name")
		return
	}
	var msg string
	var err error
	switch action {
	case "pause":
		var idle bool
		if idle, err = h.adm.Pause(ctx, pool, name); err == nil {
			msg = "paused " + name
			if !idle {
				msg += fmt.Sprintf(", but a batch is still in flight after %s: it may still commit", h.adm.IdleWait())
			}
		}
	case "resume":
		var stopped int
		if stopped, err = h.adm.Resume(ctx, pool, name); err == nil {
			msg = "resumed " + name
			if stopped > 0 {
				msg += fmt.Sprintf(" (failure cleared on %d checkpoint(s): the failed event is tried again)", stopped)
			}
		}
	case "rebuild":
		r, rerr := h.adm.RequestRebuild(ctx, pool, name)
		if err = rerr; err == nil {
			msg = fmt.Sprintf("rebuild of %s %s requested: a runner with the code of version %d will empty the read model once and replay it from position 0",
				name, r.Active, r.Active.Version)
			if r.Paused {
				msg += fmt.Sprintf("; %s is paused: it replays nothing until resumed", name)
			}
		}
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown projection action %q (want pause, resume or rebuild)", action))
		return
	}
	h.answer(w, r, action, name, msg, err)
}

func (h *Handler) deadLetterAction(w http.ResponseWriter, r *http.Request) {
	ctx, pool := r.Context(), h.cfg.Pool
	action := r.PathValue("action")
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid dead letter ID %q (want a positive integer)", r.PathValue("id")))
		return
	}
	var msg string
	switch action {
	case "retry":
		err = h.adm.RetryDeadLetter(ctx, pool, id)
		msg = fmt.Sprintf("retry of dead letter %d requested; the runner that owns its aggregate will run the handler on it again", id)
	case "discard":
		err = h.adm.DiscardDeadLetter(ctx, pool, id)
		msg = fmt.Sprintf("dead letter %d discarded", id)
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown dead letter action %q (want retry or discard)", action))
		return
	}
	h.answer(w, r, action, "dead letter "+strconv.FormatInt(id, 10), msg, err)
}

// answer writes the outcome of an action and logs it.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, action, target, msg string, err error) {
	log := h.cfg.Logger.With(zap.String("action", action), zap.String("target", target), zap.String("remote", r.RemoteAddr))
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case admin.NotFound(err):
			code = http.StatusNotFound
		case admin.Refused(err):
			code = http.StatusConflict
		}
		log.Warn("console action failed", zap.Int("status", code), zap.Error(err))
		writeError(w, code, err.Error())
		return
	}
	log.Info("console action", zap.String("result", msg))
	writeJSON(w, http.StatusOK, map[string]string{"message": msg})
}
