/* The route table: method + path pattern -> operation and path parameters. */
#ifndef KMS_HTTP_ROUTES_H
#define KMS_HTTP_ROUTES_H

#include <stddef.h>

#include "kms/base/op.h"

#define ROUTE_PATH_MAX 1024

struct route_match {
	enum kms_op op;
	char buf[ROUTE_PATH_MAX]; /* the path, split in place */
	const char *tenant, *key, *name, *variant, *version;
};

enum route_result { ROUTE_OK, ROUTE_NOT_FOUND, ROUTE_METHOD };

/* Matches method ("GET", "POST", "PUT" = POST, "LIST"; is_list turns a GET into LIST)
 * and path. On ROUTE_OK m->op and the parameters are set. */
enum route_result route_match(const char *method, int is_list, const char *path, struct route_match *m);

#endif
