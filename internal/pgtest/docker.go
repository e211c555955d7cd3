package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

const (
	dockerImage    = "postgres"
	dockerTag      = "15"
	dockerOwnerKey = "eventline.pgtest.owner" // label: "<hostname>/<pid>" of the test binary
)

// startDocker starts a postgres:15 container; an unavailableError if no Docker engine answers.
func startDocker(ctx context.Context) (*server, error) {
	pool, err := dockertest.NewPool("")
	if err == nil {
		err = pool.Client.PingWithContext(ctx)
	}
	if err != nil {
		return nil, unavailable("no engine answers: %v", err)
	}
	hostname, _ := os.Hostname()
	sweepStaleContainers(pool, hostname)

	// With a remote engine, publish the port on its network and connect there.
	host, bindIP := "127.0.0.1", "127.0.0.1"
	if u, err := url.Parse(os.Getenv("DOCKER_HOST")); err == nil && u.Scheme == "tcp" && u.Hostname() != "" {
		host, bindIP = u.Hostname(), ""
	}

	began := time.Now()
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Name:       "eventline-pgtest-" + strconv.Itoa(os.Getpid()) + "-" + randomHex(3),
		Repository: dockerImage,
		Tag:        dockerTag,
		Env:        []string{"POSTGRES_HOST_AUTH_METHOD=trust", "POSTGRES_INITDB_ARGS=--no-locale -E UTF8 -N"},
		Cmd: []string{"postgres",
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
			"-c", "max_connections=200",
			"-c", "max_prepared_transactions=10",
			"-c", "shared_buffers=128MB",
		},
		Labels:       map[string]string{dockerOwnerKey: hostname + "/" + strconv.Itoa(os.Getpid())},
		ExposedPorts: []string{"5432/tcp"},
		PortBindings: map[dc.Port][]dc.PortBinding{"5432/tcp": {{HostIP: bindIP}}},
	}, func(hc *dc.HostConfig) {
		hc.RestartPolicy = dc.RestartPolicy{Name: "no"}
		hc.Tmpfs = map[string]string{"/var/lib/postgresql/data": "rw"}
		hc.ShmSize = 256 << 20
	})
	if err != nil {
		return nil, fmt.Errorf("start %s:%s container: %w", dockerImage, dockerTag, err)
	}
	closeContainer := func() error {
		defer pool.Client.HTTPClient.CloseIdleConnections()
		if err := pool.Purge(res); err != nil {
			return fmt.Errorf("remove container %s: %w", res.Container.Name, err)
		}
		return nil
	}

	connString := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", net.JoinHostPort(host, res.GetPort("5432/tcp")))
	// The image's entrypoint runs initdb and a server on a Unix socket only, then restarts it
	// listening on TCP: a TCP connection that succeeds reaches the final server.
	if err := waitAccepting(ctx, connString, 2*time.Minute); err != nil {
		return nil, errors.Join(err, closeContainer())
	}
	return &server{
		desc:       fmt.Sprintf("Docker container %s (%s:%s) started in %s", strings.TrimPrefix(res.Container.Name, "/"), dockerImage, dockerTag, time.Since(began).Round(time.Millisecond)),
		connString: connString,
		close:      closeContainer,
	}, nil
}

// sweepStaleContainers removes the containers that test binaries on this host started and did
// not live to remove.
func sweepStaleContainers(pool *dockertest.Pool, hostname string) {
	containers, err := pool.Client.ListContainers(dc.ListContainersOptions{
		All:     true,
		Filters: map[string][]string{"label": {dockerOwnerKey}},
	})
	if err != nil {
		return
	}
	for _, ctr := range containers {
		host, pidText, ok := strings.Cut(ctr.Labels[dockerOwnerKey], "/")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || host != hostname || processAlive(pid) {
			continue
		}
		if err := pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: ctr.ID, Force: true, RemoveVolumes: true}); err == nil {
			fmt.Fprintf(os.Stderr, "pgtest: removed container %s, left by an earlier run\n", ctr.ID[:min(12, len(ctr.ID))])
		}
	}
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
