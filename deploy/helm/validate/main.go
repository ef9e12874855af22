// Command validate decodes every object of a multi-document YAML stream (the
// output of `helm template`) strictly into the Kubernetes API types, offline.
//
// An object passes only when its apiVersion and kind are registered here (core,
// apps, policy, and the prometheus-operator's monitoring.coreos.com/v1) and it
// decodes with no unknown field, no duplicate field and no value of the wrong
// type. Nothing is sent to a cluster.
//
// Usage: helm template ... | validate   (or: validate FILE...)
// Prints "ok <apiVersion> <kind> <name>" per object; exit 1 when any object fails.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

func newScheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme,
		appsv1.AddToScheme,
		policyv1.AddToScheme,
		monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return scheme
}

// documents splits a YAML stream into its non-empty documents.
func documents(stream io.Reader) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(stream))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if isBlank(doc) {
			continue
		}
		docs = append(docs, doc)
	}
}

// isBlank: only comments and whitespace (helm leaves such documents for disabled templates).
func isBlank(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed != "" && !strings.HasPrefix(trimmed, "#") && trimmed != "---" {
			return false
		}
	}
	return true
}

// source is the "# Source: chart/templates/x.yaml" line helm writes above each object.
func source(doc []byte) string {
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "# Source: ") {
			return strings.TrimPrefix(line, "# Source: ")
		}
	}
	return "?"
}

func check(decoder runtime.Decoder, doc []byte) (string, error) {
	asJSON, err := sigsyaml.YAMLToJSON(doc)
	if err != nil {
		return "", fmt.Errorf("not YAML: %w", err)
	}
	var head unstructured.Unstructured
	if err := head.UnmarshalJSON(asJSON); err != nil {
		return "", fmt.Errorf("no apiVersion/kind: %w", err)
	}
	name := fmt.Sprintf("%s %s %s", head.GetAPIVersion(), head.GetKind(), head.GetName())
	// Strict: unknown or duplicate fields are errors (not dropped), as are wrong types
	// and kinds this program has no type for.
	if _, _, err := decoder.Decode(asJSON, nil, nil); err != nil {
		return name, err
	}
	return name, nil
}

func main() {
	var inputs []io.Reader
	if len(os.Args) > 1 {
		for _, path := range os.Args[1:] {
			data, err := os.ReadFile(path)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			inputs = append(inputs, bytes.NewReader(data))
		}
	} else {
		inputs = append(inputs, os.Stdin)
	}
	codecs := serializer.NewCodecFactory(newScheme(), serializer.EnableStrict)
	decoder := codecs.UniversalDeserializer()
	failed, seen := 0, 0
	for _, input := range inputs {
		docs, err := documents(input)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cannot split the YAML stream:", err)
			os.Exit(2)
		}
		for _, doc := range docs {
			seen++
			name, err := check(decoder, doc)
			if err != nil {
				failed++
				fmt.Printf("FAIL %s (%s): %v\n", name, source(doc), err)
				continue
			}
			fmt.Printf("ok %s\n", name)
		}
	}
	if seen == 0 {
		fmt.Fprintln(os.Stderr, "no object in the input")
		os.Exit(2)
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d objects failed strict decoding\n", failed, seen)
		os.Exit(1)
	}
}
