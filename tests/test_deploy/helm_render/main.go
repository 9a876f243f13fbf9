// Command helm_render renders a Helm chart's templates offline with Go's text/template and the subset of
// Helm/Sprig functions the l2g-stream chart uses. It exists because helm itself cannot be installed
// here; the Go template engine is the same one Helm uses, so syntax, whitespace trimming and pipelines
// behave as in `helm template`.
//
// Input (stdin, JSON): {"templates": {"<chart>/templates/<file>": "<source>"}, "values": {...},
// "chart": {"Name", "Version", "AppVersion"}, "release": {"Name", "Namespace"}, "files": {"files/<name>": "<text>"}}
// (`.Files.Get` reads "files").
// Output (stdout, JSON): {"<chart>/templates/<file>": "<rendered text>"} for every file not starting with
// "_". Errors (template syntax, `fail`, `required`) go to stderr with exit status 1.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

type input struct {
	Templates map[string]string      `json:"templates"`
	Values    map[string]interface{} `json:"values"`
	Chart     map[string]interface{} `json:"chart"`
	Release   map[string]interface{} `json:"release"`
	Files     map[string]string      `json:"files"`
}

// chartFiles is `.Files`: the chart's non-template files by path relative to the chart root.
type chartFiles map[string]string

// Get returns a file's content, or "" when the chart has no such file (as Helm does).
func (f chartFiles) Get(name string) string { return f[name] }

func strval(v interface{}) string {
	switch t := v.(type) {
	case nil:
		return ""
	case string:
		return t
	case []byte:
		return string(t)
	case error:
		return t.Error()
	case fmt.Stringer:
		return t.String()
	default:
		return fmt.Sprintf("%v", v)
	}
}

func toInt(v interface{}) int {
	switch t := v.(type) {
	case nil:
		return 0
	case int:
		return t
	case int64:
		return int(t)
	case float64:
		return int(t)
	case bool:
		if t {
			return 1
		}
		return 0
	case string:
		if i, err := strconv.Atoi(strings.TrimSpace(t)); err == nil {
			return i
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(t), 64); err == nil {
			return int(f)
		}
		return 0
	default:
		return 0
	}
}

func empty(v interface{}) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.String, reflect.Map, reflect.Slice, reflect.Array:
		return r.Len() == 0
	case reflect.Bool:
		return !r.Bool()
	case reflect.Int, reflect.Int64, reflect.Int32:
		return r.Int() == 0
	case reflect.Float64, reflect.Float32:
		return r.Float() == 0
	}
	return false
}

var plainScalar = regexp.MustCompile(`^[A-Za-z_/.][A-Za-z0-9_./:@-]*$`)
var yamlSpecial = map[string]bool{"true": true, "false": true, "yes": true, "no": true, "on": true,
	"off": true, "null": true, "y": true, "n": true, "~": true}

func yamlScalar(v interface{}) string {
	switch t := v.(type) {
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(t)
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	case int:
		return strconv.Itoa(t)
	case int64:
		return strconv.FormatInt(t, 10)
	case string:
		if plainScalar.MatchString(t) && !yamlSpecial[strings.ToLower(t)] {
			return t
		}
		b, _ := json.Marshal(t)
		return string(b)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// yamlLines renders v in block style the way sigs.k8s.io/yaml does: sorted keys, sequences in a
// mapping not indented.
func yamlLines(v interface{}) []string {
	switch t := v.(type) {
	case map[string]interface{}:
		if len(t) == 0 {
			return []string{"{}"}
		}
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			child := t[k]
			lines := yamlLines(child)
			switch c := child.(type) {
			case map[string]interface{}:
				if len(c) > 0 {
					out = append(out, yamlScalar(k)+":")
					for _, l := range lines {
						out = append(out, "  "+l)
					}
					continue
				}
			case []interface{}:
				if len(c) > 0 {
					out = append(out, yamlScalar(k)+":")
					out = append(out, lines...)
					continue
				}
			}
			out = append(out, yamlScalar(k)+": "+lines[0])
		}
		return out
	case []interface{}:
		if len(t) == 0 {
			return []string{"[]"}
		}
		var out []string
		for _, item := range t {
			lines := yamlLines(item)
			out = append(out, "- "+lines[0])
			for _, l := range lines[1:] {
				out = append(out, "  "+l)
			}
		}
		return out
	}
	return []string{yamlScalar(v)}
}

func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
}

func funcs(t *template.Template) template.FuncMap {
	return template.FuncMap{
		"include": func(name string, data interface{}) (string, error) {
			var buf bytes.Buffer
			err := t.ExecuteTemplate(&buf, name, data)
			return buf.String(), err
		},
		"toYaml":  func(v interface{}) string { return strings.Join(yamlLines(v), "\n") },
		"toJson":  func(v interface{}) (string, error) { b, err := json.Marshal(v); return string(b), err },
		"indent":  indent,
		"nindent": func(n int, s string) string { return "\n" + indent(n, s) },
		"quote": func(args ...interface{}) string {
			var out []string
			for _, a := range args {
				if a != nil {
					out = append(out, fmt.Sprintf("%q", strval(a)))
				}
			}
			return strings.Join(out, " ")
		},
		"toString": strval,
		"default": func(d interface{}, given ...interface{}) interface{} {
			if len(given) == 0 || empty(given[0]) {
				return d
			}
			return given[0]
		},
		"empty": empty,
		"required": func(msg string, v interface{}) (interface{}, error) {
			if v == nil {
				return nil, errors.New(msg)
			}
			if s, ok := v.(string); ok && s == "" {
				return nil, errors.New(msg)
			}
			return v, nil
		},
		"fail":   func(msg string) (string, error) { return "", errors.New(msg) },
		"kindIs": func(kind string, v interface{}) bool { return reflect.ValueOf(v).Kind().String() == kind },
		"int":    toInt,
		"min": func(a interface{}, rest ...interface{}) int64 {
			m := int64(toInt(a))
			for _, r := range rest {
				if v := int64(toInt(r)); v < m {
					m = v
				}
			}
			return m
		},
		"max": func(a interface{}, rest ...interface{}) int64 {
			m := int64(toInt(a))
			for _, r := range rest {
				if v := int64(toInt(r)); v > m {
					m = v
				}
			}
			return m
		},
		"trunc": func(n int, s string) string {
			if n >= 0 && len(s) > n {
				return s[:n]
			}
			return s
		},
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"contains":   func(substr, s string) bool { return strings.Contains(s, substr) },
		"hasPrefix":  func(prefix, s string) bool { return strings.HasPrefix(s, prefix) },
		"replace":    func(old, new, src string) string { return strings.ReplaceAll(src, old, new) },
		"lower":      strings.ToLower,
		"upper":      strings.ToUpper,
		"sha256sum": func(s string) string {
			h := sha256.Sum256([]byte(s))
			return hex.EncodeToString(h[:])
		},
	}
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	root := template.New("chart").Option("missingkey=zero")
	root.Funcs(funcs(root))
	names := make([]string, 0, len(in.Templates))
	for name := range in.Templates {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := root.New(name).Parse(in.Templates[name]); err != nil {
			return err
		}
	}
	out := map[string]string{}
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		data := map[string]interface{}{
			"Values":  in.Values,
			"Chart":   in.Chart,
			"Release": in.Release,
			"Template": map[string]interface{}{
				"Name":     name,
				"BasePath": path.Dir(name),
			},
			"Capabilities": map[string]interface{}{},
			"Files":        chartFiles(in.Files),
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return err
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "render error:", err)
		os.Exit(1)
	}
}
