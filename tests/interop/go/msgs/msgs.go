// SPDX-License-Identifier: MIT

// Package msgs holds the interop messages (tests/interop/proto/echo.proto)
// and the seed's UserService messages (examples/user/user.proto), encoded
// by hand with protowire, plus a grpc codec for them.
//
// Debian ships grpc-go and the protobuf runtime but no protoc-gen-go-grpc,
// and building protoc-gen-go offline is more machinery than these five
// messages need. The codec is registered under the name "proto", so grpc
// uses it for every call; messages it does not know (the health service's,
// which grpc-go ships generated) go to the standard protobuf codec.
package msgs

import (
	"fmt"

	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/encoding/protowire"
)

// EchoRequest is mica.interop.EchoRequest.
type EchoRequest struct {
	Message       string
	Count         int32
	DelayMs       int32
	Status        int32
	StatusMessage string
	Payload       []byte
	ResponseSize  int32
}

// EchoResponse is mica.interop.EchoResponse.
type EchoResponse struct {
	Message string
	Index   int32
	Payload []byte
}

// UserRequest is user.UserRequest.
type UserRequest struct{ UserID string }

// UserResponse is user.UserResponse.
type UserResponse struct {
	Name string
	Age  int32
}

type wire interface {
	marshal(b []byte) []byte
	unmarshal(num protowire.Number, typ protowire.Type, b []byte) (int, bool)
}

func putString(b []byte, n protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, n, protowire.BytesType), s)
}

func putBytes(b []byte, n protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	return protowire.AppendBytes(protowire.AppendTag(b, n, protowire.BytesType), v)
}

func putInt(b []byte, n protowire.Number, v int32) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, n, protowire.VarintType), uint64(int64(v)))
}

func (m *EchoRequest) marshal(b []byte) []byte {
	b = putString(b, 1, m.Message)
	b = putInt(b, 2, m.Count)
	b = putInt(b, 3, m.DelayMs)
	b = putInt(b, 4, m.Status)
	b = putString(b, 5, m.StatusMessage)
	b = putBytes(b, 6, m.Payload)
	return putInt(b, 7, m.ResponseSize)
}

func (m *EchoResponse) marshal(b []byte) []byte {
	b = putString(b, 1, m.Message)
	b = putInt(b, 2, m.Index)
	return putBytes(b, 3, m.Payload)
}

func (m *UserRequest) marshal(b []byte) []byte { return putString(b, 1, m.UserID) }

func (m *UserResponse) marshal(b []byte) []byte {
	return putInt(putString(b, 1, m.Name), 2, m.Age)
}

// field reads one field's value: a varint or a length-delimited string.
func field(typ protowire.Type, b []byte) (v uint64, s []byte, n int) {
	switch typ {
	case protowire.VarintType:
		v, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		s, n = protowire.ConsumeBytes(b)
	default:
		n = protowire.ConsumeFieldValue(0, typ, b)
	}
	return
}

func (m *EchoRequest) unmarshal(num protowire.Number, typ protowire.Type, b []byte) (int, bool) {
	v, s, n := field(typ, b)
	switch num {
	case 1:
		m.Message = string(s)
	case 2:
		m.Count = int32(v)
	case 3:
		m.DelayMs = int32(v)
	case 4:
		m.Status = int32(v)
	case 5:
		m.StatusMessage = string(s)
	case 6:
		m.Payload = append([]byte(nil), s...)
	case 7:
		m.ResponseSize = int32(v)
	}
	return n, true
}

func (m *EchoResponse) unmarshal(num protowire.Number, typ protowire.Type, b []byte) (int, bool) {
	v, s, n := field(typ, b)
	switch num {
	case 1:
		m.Message = string(s)
	case 2:
		m.Index = int32(v)
	case 3:
		m.Payload = append([]byte(nil), s...)
	}
	return n, true
}

func (m *UserRequest) unmarshal(num protowire.Number, typ protowire.Type, b []byte) (int, bool) {
	_, s, n := field(typ, b)
	if num == 1 {
		m.UserID = string(s)
	}
	return n, true
}

func (m *UserResponse) unmarshal(num protowire.Number, typ protowire.Type, b []byte) (int, bool) {
	v, s, n := field(typ, b)
	switch num {
	case 1:
		m.Name = string(s)
	case 2:
		m.Age = int32(v)
	}
	return n, true
}

// Codec encodes the messages above and defers to protobuf for the rest.
type Codec struct{}

// Marshal implements encoding.Codec.
func (Codec) Marshal(v interface{}) ([]byte, error) {
	if m, ok := v.(wire); ok {
		return m.marshal(nil), nil
	}
	if m, ok := v.(protov1.Message); ok {
		return protov1.Marshal(m)
	}
	return nil, fmt.Errorf("msgs: cannot marshal %T", v)
}

// Unmarshal implements encoding.Codec.
func (Codec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(wire)
	if !ok {
		if pm, ok := v.(protov1.Message); ok {
			return protov1.Unmarshal(data, pm)
		}
		return fmt.Errorf("msgs: cannot unmarshal into %T", v)
	}
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
		n, _ = m.unmarshal(num, typ, data)
		if n < 0 {
			return protowire.ParseError(n)
		}
		data = data[n:]
	}
	return nil
}

// Name implements encoding.Codec: "proto", so grpc uses this codec by default.
func (Codec) Name() string { return "proto" }

func init() { encoding.RegisterCodec(Codec{}) }
