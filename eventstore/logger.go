package eventstore

import "go.uber.org/zap"

// Logger is the logging seam of the store. Key/value pairs alternate: key string, value any.
// Implementations must be safe for concurrent use.
type Logger interface {
	Debug(msg string, keyvals ...any)
	Info(msg string, keyvals ...any)
	Error(msg string, keyvals ...any)
}

// NopLogger discards everything.
type NopLogger struct{}

func (NopLogger) Debug(string, ...any) {}
func (NopLogger) Info(string, ...any)  {}
func (NopLogger) Error(string, ...any) {}

// ZapLogger adapts a *zap.Logger to Logger. A nil logger discards everything.
func ZapLogger(l *zap.Logger) Logger {
	if l == nil {
		return NopLogger{}
	}
	return zapLogger{l.Sugar()}
}

type zapLogger struct{ s *zap.SugaredLogger }

func (z zapLogger) Debug(msg string, kv ...any) { z.s.Debugw(msg, kv...) }
func (z zapLogger) Info(msg string, kv ...any)  { z.s.Infow(msg, kv...) }
func (z zapLogger) Error(msg string, kv ...any) { z.s.Errorw(msg, kv...) }

var (
	_ Logger = NopLogger{}
	_ Logger = zapLogger{}
)
