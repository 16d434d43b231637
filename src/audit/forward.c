/*
 * agent_guard: the libpq side of forwarding a hot standby's audit records to
 * the primary (see src/audit/forward.rs). Only libpq and libc here, no server
 * headers: nothing in this file can raise a PostgreSQL error (it is called
 * from Rust, also from a transaction-end callback), every failure comes back
 * as a return code and a message. Every wait is bounded by a deadline.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
set_err(char *err, int errlen, const char *what, const char *msg)
{
	size_t		n;

	if (errlen <= 0)
		return;
	snprintf(err, (size_t) errlen, "%s%s%s", what, (msg && *msg) ? ": " : "", msg ? msg : "");
	/* libpq messages end with a newline */
	n = strlen(err);
	while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
		err[--n] = '\0';
}

/* 1: ready, 0: deadline passed, -1: error */
static int
wait_socket(PGconn *conn, int for_write, long long deadline)
{
	for (;;)
	{
		struct pollfd p;
		long long	left = deadline - now_ms();
		int			r;

		if (left <= 0)
			return 0;
		p.fd = PQsocket(conn);
		if (p.fd < 0)
			return -1;
		p.events = for_write ? POLLOUT : POLLIN;
		p.revents = 0;
		r = poll(&p, 1, left > 1000 ? 1000 : (int) left);
		if (r > 0)
			return 1;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

/*
 * Connect: `conninfo` (a connection string or URI, may be empty) with its
 * dbname replaced by `dbname`. NULL on failure, with `err` set.
 */
void *
ag_fwd_connect(const char *conninfo, const char *dbname, const char *appname,
			   int timeout_ms, char *err, int errlen)
{
	char		options[160];
	const char *keys[] = {"dbname", "dbname", "application_name", "client_encoding", "options", NULL};
	const char *vals[6];
	PGconn	   *conn;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	long long	deadline = now_ms() + timeout_ms;

	snprintf(options, sizeof(options),
			 "-c synchronous_commit=on -c standard_conforming_strings=on -c statement_timeout=%d",
			 timeout_ms);
	vals[0] = conninfo;
	vals[1] = dbname;
	vals[2] = appname;
	vals[3] = "UTF8";
	vals[4] = options;
	vals[5] = NULL;
	conn = PQconnectStartParams(keys, vals, 1);
	if (conn == NULL)
	{
		set_err(err, errlen, "out of memory", NULL);
		return NULL;
	}
	if (PQstatus(conn) == CONNECTION_BAD)
	{
		set_err(err, errlen, "cannot connect to the primary", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	while (st != PGRES_POLLING_OK)
	{
		int			r;

		if (st == PGRES_POLLING_FAILED)
		{
			set_err(err, errlen, "cannot connect to the primary", PQerrorMessage(conn));
			PQfinish(conn);
			return NULL;
		}
		r = wait_socket(conn, st == PGRES_POLLING_WRITING, deadline);
		if (r <= 0)
		{
			set_err(err, errlen, r == 0 ? "connecting to the primary timed out" : "cannot connect to the primary",
					r == 0 ? NULL : strerror(errno));
			PQfinish(conn);
			return NULL;
		}
		st = PQconnectPoll(conn);
	}
	if (PQsetnonblocking(conn, 1) != 0)
	{
		set_err(err, errlen, "cannot use the connection to the primary", PQerrorMessage(conn));
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/*
 * Run `sql` (a simple query, several statements allowed). 0: done, `out`
 * holds the first column of the first row of the last result (or ""); 1:
 * the primary reported an error (`err`: its SQLSTATE and message); 2: the
 * connection failed or the deadline passed. After 1 or 2 the caller closes
 * the connection.
 */
int
ag_fwd_exec(void *c, const char *sql, int timeout_ms, char *out, int outlen, char *err, int errlen)
{
	PGconn	   *conn = (PGconn *) c;
	long long	deadline = now_ms() + timeout_ms;
	int			rc = 0;
	PGresult   *res;

	if (outlen > 0)
		out[0] = '\0';
	if (!PQsendQuery(conn, sql))
	{
		set_err(err, errlen, "cannot send to the primary", PQerrorMessage(conn));
		return 2;
	}
	for (;;)
	{
		int			f = PQflush(conn);

		if (f == 0)
			break;
		if (f < 0 || wait_socket(conn, 1, deadline) <= 0)
		{
			set_err(err, errlen, f < 0 ? "cannot send to the primary" : "the primary did not answer in time",
					f < 0 ? PQerrorMessage(conn) : NULL);
			return 2;
		}
	}
	for (;;)
	{
		while (PQisBusy(conn))
		{
			int			r = wait_socket(conn, 0, deadline);

			if (r <= 0)
			{
				set_err(err, errlen, r == 0 ? "the primary did not answer in time" : "lost the connection to the primary",
						r == 0 ? NULL : strerror(errno));
				return 2;
			}
			if (!PQconsumeInput(conn))
			{
				set_err(err, errlen, "lost the connection to the primary", PQerrorMessage(conn));
				return 2;
			}
		}
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		switch (PQresultStatus(res))
		{
			case PGRES_TUPLES_OK:
				if (rc == 0 && outlen > 0 && PQntuples(res) > 0 && PQnfields(res) > 0)
					snprintf(out, (size_t) outlen, "%s", PQgetvalue(res, 0, 0));
				break;
			case PGRES_COMMAND_OK:
			case PGRES_EMPTY_QUERY:
				break;
			default:
				if (rc == 0)
				{
					const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
					const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
					char		what[64];

					snprintf(what, sizeof(what), "the primary refused the records (SQLSTATE %s)",
							 state ? state : "?");
					if (msg)
						set_err(err, errlen, what, msg);
					else
						set_err(err, errlen, what, PQresultErrorMessage(res));
					rc = 1;
				}
				break;
		}
		PQclear(res);
	}
	if (rc == 0 && PQstatus(conn) != CONNECTION_OK)
	{
		set_err(err, errlen, "lost the connection to the primary", PQerrorMessage(conn));
		return 2;
	}
	return rc;
}

void
ag_fwd_close(void *c)
{
	if (c)
		PQfinish((PGconn *) c);
}
