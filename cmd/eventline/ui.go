package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/eventline/eventline/console"
)

// uiListenDefault is where 'eventline ui' listens: this machine only.
const uiListenDefault = "127.0.0.1:7070"

// uiTokenEnv names the variable 'eventline ui' takes its token from when --token is not given.
const uiTokenEnv = "EVENTLINE_UI_TOKEN"

// uiShutdownTimeout bounds how long the console lets requests in flight finish after Ctrl-C.
const uiShutdownTimeout = 5 * time.Second

func (a *app) cmdUI(ctx context.Context, args []string) error {
	c := a.newCommand("ui", "[--listen 127.0.0.1:7070] [--allow-actions] [--token TOKEN] [--poll-interval 2s]",
		`Serves the web console until interrupted (Ctrl-C exits 0): every checkpoint with its owner,
position, head, lag in events and seconds (with a chart of the last 5 minutes), role, state and
last error; the projections' lifecycle records; the dead letters; the live runner processes.

It is read-only unless started with --allow-actions: then its page can pause, resume and rebuild
projections (with the same refusals as the CLI) and retry and discard dead letters. Every action
must carry the token (--token, else $`+uiTokenEnv+`), which the page asks for or takes from the
address it prints (after #, which browsers do not send). On a loopback address, --allow-actions
without a token makes one up and prints it in that address; on any other address a token is
required. Prefer the variable to the flag: other users of the machine can see flags.

It listens on 127.0.0.1 by default. On a loopback address it only answers requests addressed to
localhost or a loopback IP, so that a web page cannot reach it through a DNS name of its own.`)
	listen := c.String("listen", uiListenDefault, "`address` to listen on (host:port; port 0 picks one)")
	allow := c.Bool("allow-actions", false, "let the page pause, resume, rebuild and act on dead letters")
	token := c.String("token", "", "secret that actions must carry (default $"+uiTokenEnv+")")
	poll := c.Duration("poll-interval", console.PollIntervalDefault, "how often the page reads the status")
	if err := a.parse(c, args); err != nil {
		return err
	}
	if *token == "" {
		*token = a.getenv(uiTokenEnv)
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return usageErrorf(c.name, "ui: --listen %q: %v", *listen, err)
	}
	loopback := isLoopbackHost(host)
	generated := false
	if *allow && *token == "" {
		if !loopback {
			return usageErrorf(c.name, "ui: --allow-actions on %s (not a loopback address) needs a token: set %s or --token",
				*listen, uiTokenEnv)
		}
		*token, generated = rand.Text(), true
	}
	if !*allow {
		*token = "" // read-only: no token to leak through the page
	}
	// The table names are checked before connecting, as for every command.
	names, err := a.names()
	if err != nil {
		return err
	}
	pool, err := a.connectN(ctx, c.name, uiMaxConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	h, err := console.New(console.Config{
		Pool: pool, Names: names, AllowActions: *allow, Token: *token, PollInterval: *poll, Logger: a.logger(),
	})
	if err != nil {
		return usageErrorf(c.name, "ui: %v", err)
	}
	var handler http.Handler = h
	if loopback {
		handler = loopbackOnly(h)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("ui: %w", err)
	}
	url := "http://" + ln.Addr().String() + "/"
	mode := "read-only (start with --allow-actions to pause, resume, rebuild and act on dead letters)"
	if *allow {
		mode = "actions allowed with the token"
		if generated {
			url += "#token=" + *token
			mode = "actions allowed with the token in this address"
		}
	}
	fmt.Fprintf(a.stdout, "eventline console at %s\n%s; Ctrl-C to stop\n", url, mode)
	if a.uiListening != nil {
		a.uiListening(url)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("ui: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), uiShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ui: stop: %w", err)
	}
	return nil
}

// uiMaxConns: the page's polls, and a pause that waits for the batches in flight, at once.
const uiMaxConns = 4

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackOnly refuses requests whose Host is not localhost or a loopback IP: a page served
// under another name that resolves to 127.0.0.1 (DNS rebinding) would otherwise be same-origin
// with the console.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
		if !isLoopbackHost(host) {
			http.Error(w, "the console on a loopback address answers only requests to localhost or a loopback IP",
				http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// logger writes the console's action log to stderr.
func (a *app) logger() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.TimeKey = "time"
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(a.stderr), zap.InfoLevel)
	return zap.New(core)
}
